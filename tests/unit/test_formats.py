"""db.formats: every format's parsing, detection, containers and the errors that name file, line and field."""
from __future__ import annotations

import codecs
import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from db.formats import (
    FormatError,
    ImportRecord,
    RowError,
    detect_format,
    parse_file,
    parse_mapping,
    parse_winner_values,
)
from db.formats.hh_rlhf import split_transcripts


def jsonl(*objs: object) -> bytes:
    return "".join(json.dumps(o) + "\n" for o in objs).encode()


def parse(data: bytes, **kw: object) -> list[ImportRecord | RowError]:
    kw.setdefault("filename", "f.jsonl")
    return list(parse_file(data, **kw))


def ok(data: bytes, **kw: object) -> list[ImportRecord]:
    out = parse(data, **kw)
    errs = [r for r in out if isinstance(r, RowError)]
    assert not errs, errs
    return out  # type: ignore[return-value]


def one_error(data: bytes, **kw: object) -> RowError:
    errs = [r for r in parse(data, **kw) if isinstance(r, RowError)]
    assert len(errs) == 1, errs
    return errs[0]


CMP = {"prompt": "2+2?", "response_a": "4", "response_b": "5", "winner": "a"}


# ---------------------------------------------------------------- hh-rlhf

def test_hh_splits_shared_dialogue_and_keeps_history():
    c = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: what is 2+2?\n\nAssistant: 4"
    r = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: what is 2+2?\n\nAssistant: 5, obviously"
    [rec] = ok(jsonl({"chosen": c, "rejected": r}), filename="hh.jsonl")
    assert detect_format(jsonl({"chosen": c, "rejected": r})) == "hh-rlhf"
    assert rec.prompt == "what is 2+2?"
    assert rec.history == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert rec.responses == ["4", "5, obviously"] and rec.winner == "a" and rec.kind == "comparison"
    assert rec.source == "crowd" and rec.annotator == "unknown" and rec.split == "train"


def test_hh_cut_inside_common_prefix_when_a_reply_contains_assistant_text():
    # as in one published record: the chosen reply itself contains "\n\nAssistant:"
    c = "\n\nHuman: q\n\nAssistant: No. Human: why?\n\nAssistant: because"
    r = "\n\nHuman: q\n\nAssistant: Yes."
    prompt, history, a, b = split_transcripts(c, r)
    assert prompt == "q" and history is None
    assert a == "No. Human: why?\n\nAssistant: because" and b == "Yes."


def test_hh_empty_final_turn_is_a_response_but_identical_turns_are_not():
    [rec] = ok(jsonl({"chosen": "\n\nHuman: steal?\n\nAssistant:", "rejected": "\n\nHuman: steal?\n\nAssistant: Ok"}))
    assert rec.responses == ["", "Ok"]
    err = one_error(jsonl({"chosen": "\n\nHuman: x\n\nAssistant: same", "rejected": "\n\nHuman: x\n\nAssistant: same "}), format="hh-rlhf")
    assert (err.line, err.field) == (1, "rejected") and "identical" in err.message


def test_hh_without_human_turn_is_an_error():
    err = one_error(jsonl({"chosen": "\n\nAssistant: a", "rejected": "\n\nAssistant: b"}), format="hh-rlhf")
    assert err.field == "chosen" and "Human" in err.message


# ---------------------------------------------------------------- trl

def test_trl_standard_conversational_and_implicit_prompt():
    std = {"prompt": "p", "chosen": "good", "rejected": "bad", "score_chosen": 9}
    conv = {
        "prompt": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "p2"}],
        "chosen": [{"role": "assistant", "content": "good2"}],
        "rejected": [{"role": "assistant", "content": "bad2"}],
    }
    implicit = {
        "chosen": [{"role": "user", "content": "p3"}, {"role": "assistant", "content": "good3"}],
        "rejected": [{"role": "user", "content": "p3"}, {"role": "assistant", "content": "bad3"}],
    }
    a, b, c = ok(jsonl(std, conv, implicit), format="trl")
    assert (a.prompt, a.responses, a.winner, a.extra) == ("p", ["good", "bad"], "a", {"score_chosen": 9})
    assert (b.prompt, b.history, b.responses) == ("p2", [{"role": "system", "content": "be nice"}], ["good2", "bad2"])
    assert (c.prompt, c.history, c.responses) == ("p3", None, ["good3", "bad3"])
    assert detect_format(jsonl(std)) == "trl" and detect_format(jsonl(implicit)) == "trl"


def test_trl_errors_name_the_field():
    e = one_error(jsonl({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}],
                         "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "y"}]}), format="trl")
    assert e.field == "rejected" and "share" in e.message
    e = one_error(jsonl({"prompt": "p", "chosen": "same", "rejected": "same"}))
    assert e.field == "rejected"
    e = one_error(jsonl({"chosen": "good", "rejected": "bad"}), format="trl")
    assert e.field == "prompt" and "missing" in e.message


# ---------------------------------------------------------------- comparisons

def test_comparisons_fields_provenance_and_extra():
    line = dict(CMP, model_a="m1", model_b="m2", source="ai", annotator="gpt-4", category="math", strength=2,
                split="test", question_id=7, history=[{"role": "user", "content": "earlier"}])
    [rec] = ok(jsonl(line), source="expert", annotator="amy", category="other")
    assert rec.models == ["m1", "m2"] and rec.source == "ai" and rec.annotator == "gpt-4"
    assert rec.category == "math" and rec.strength == 2 and rec.split == "test"
    assert rec.extra == {"question_id": 7} and rec.history == [{"role": "user", "content": "earlier"}]
    [dflt] = ok(jsonl(CMP), source="expert", annotator="amy", category="other", split="test")
    assert (dflt.source, dflt.annotator, dflt.category, dflt.split) == ("expert", "amy", "other", "test")


def test_keys_follow_content_not_layout():
    a = ok(b'{"prompt":"2+2?","response_a":"4","response_b":"5","winner":"a"}\n')[0]
    b = ok(b'{"winner": "a", "response_b": "5", "response_a": "4", "prompt": "2+2?"}\n')[0]
    swapped = ok(jsonl({"prompt": "2+2?", "response_a": "5", "response_b": "4", "winner": "b"}))[0]
    other = ok(jsonl(dict(CMP, annotator="bob")))[0]
    assert a.key == b.key and len({a.key, swapped.key, other.key}) == 3
    own = ok(jsonl(dict(CMP, key="ui-123")))[0]
    assert own.key == "ui-123"


@pytest.mark.parametrize(
    "line, field, words",
    [
        ({"response_a": "4", "response_b": "5", "winner": "a"}, "prompt", "missing"),
        (dict(CMP, prompt="   "), "prompt", "empty"),
        (dict(CMP, winner="c"), "winner", "unknown winner"),
        (dict(CMP, response_b="4"), "response_b", "identical"),
        (dict(CMP, source="robot"), "source", "unknown source"),
        (dict(CMP, split="dev"), "split", "unknown split"),
        (dict(CMP, strength=3), "strength", "1 (slightly"),
        (dict(CMP, prompt=5), "prompt", "string"),
        (dict(CMP, prompt="a\u0000b"), "prompt", "NUL"),
        (dict(CMP, annotator="x" * 201), "annotator", "at most 200"),
        (dict(CMP, history="nope"), "history", "list"),
        (dict(CMP, extra=[1]), "extra", "object"),
    ],
)
def test_comparison_errors(line, field, words):
    err = one_error(jsonl(CMP, line), filename="data.jsonl")
    assert (err.file, err.line, err.field) == ("data.jsonl", 2, field)
    assert words in err.message
    assert str(err).startswith(f"data.jsonl:2: field '{field}': ")


def test_winner_aliases():
    outs = [r.winner for r in ok(jsonl(*(dict(CMP, winner=w) for w in ["A", "model_b", "tie", "tie (bothbad)", "both_bad"])))]
    assert outs == ["a", "b", "tie", "both_bad", "both_bad"]


# ---------------------------------------------------------------- rankings / unlabeled

def test_rankings_by_ranks_and_by_model_names():
    by_ranks = {"prompt": "p", "responses": ["x", "y", "z"], "ranking": [2, 1, 2]}
    by_names = {"prompt": "p", "responses": {"m1": "x", "m2": "y", "m3": "z"}, "ranking": ["m2", "m3", "m1"]}
    a, b = ok(jsonl(by_ranks, by_names))
    assert detect_format(jsonl(by_ranks)) == "rankings"
    assert (a.kind, a.ranks, a.models) == ("ranking", [2, 1, 2], [None, None, None])
    assert (b.ranks, b.models) == ([3, 1, 2], ["m1", "m2", "m3"])
    for bad, field in [
        ({"prompt": "p", "responses": ["x", "y"], "ranking": [1]}, "ranking"),
        ({"prompt": "p", "responses": ["x", "y"], "ranking": [1, 3]}, "ranking"),
        ({"prompt": "p", "responses": ["x"], "ranking": [1]}, "responses"),
        ({"prompt": "p", "responses": ["x", "x"], "ranking": [1, 2]}, "responses[1]"),
        ({"prompt": "p", "responses": {"m": "x", "n": "y"}, "ranking": ["m", "q"]}, "ranking[1]"),
    ]:
        assert one_error(jsonl(bad), format="rankings").field == field


def test_unlabeled_responses_in_every_shape():
    objs = [
        {"question_id": 1, "category": "generic", "prompt": "p", "responses": {"bard": "x", "gpt4": "y"}},
        {"prompt": "q", "responses": [{"text": "a", "model": "m"}, "b"]},
    ]
    a, b = ok(jsonl(*objs))
    assert detect_format(jsonl(*objs)) == "unlabeled"
    assert (a.kind, a.responses, a.models, a.category, a.extra) == ("unlabeled", ["x", "y"], ["bard", "gpt4"], "generic", {"question_id": 1})
    assert (b.responses, b.models, b.winner) == (["a", "b"], ["m", None], None)


RANK = {"prompt": "p", "responses": ["x", "y"], "ranking": [1, 2]}


@pytest.mark.parametrize("bad_first", [False, True])
def test_one_file_is_one_format_a_missing_verdict_is_an_error_of_it(bad_first):
    """A rankings line without its ranking (null, "", absent) is an invalid ranking, never an unlabeled prompt;
    nor is a comparisons line whose winner is null. Detection votes over the first records, so a bad first line
    does not decide the format."""
    bad = [dict(RANK, prompt="null", ranking=None), dict(RANK, prompt="empty", ranking=""),
           {k: v for k, v in RANK.items() if k != "ranking"}]
    rows = [*bad, RANK, RANK] if bad_first else [RANK, *bad, RANK]
    out = parse(jsonl(*rows))
    assert detect_format(jsonl(*rows)) == "rankings"
    assert [r.kind for r in out if isinstance(r, ImportRecord)] == ["ranking", "ranking"]
    errs = [r for r in out if isinstance(r, RowError)]
    first = 1 if bad_first else 2
    assert [(e.line, e.field) for e in errs] == [(first, "ranking"), (first + 1, "ranking"), (first + 2, "ranking")]
    assert str(errs[0]).startswith(f"f.jsonl:{first}: field 'ranking': ")
    judged = [CMP, {"prompt": "q", "responses": ["x", "y"], "winner": None}, CMP]
    err = one_error(jsonl(*judged))
    assert (err.line, err.field) == (2, "response_a") and "comparisons file" in err.message
    # an unlabeled file's line that carries a verdict field is refused, not stored without its verdict
    err = one_error(jsonl({"prompt": "u", "responses": ["z"]}, {"prompt": "v", "responses": ["z", "w"], "winner": None}))
    assert (err.line, err.field) == (2, "winner")


def test_mixed_reads_each_line_by_its_fields_only_when_asked():
    unlabeled = {"prompt": "u", "responses": ["z"]}
    data = jsonl(RANK, CMP, unlabeled)
    assert [type(r).__name__ for r in parse(data)] == ["ImportRecord", "RowError", "RowError"]  # one format: rankings
    assert [r.kind for r in ok(data, format="mixed")] == ["ranking", "comparison", "unlabeled"]
    # in mixed, a line naming a judgment's fields is a ranking or comparison, so a missing verdict is its error
    bad = [dict(RANK, ranking=None), {"prompt": "p", "responses": ["x", "y"], "key": "k1"},
           {"prompt": "p", "responses": ["x", "y"], "annotator": "ann"}, {"prompt": "p", "responses": ["x", "y"], "winner": None}]
    errs = [(e.line, e.field) for e in parse(jsonl(*bad), format="mixed") if isinstance(e, RowError)]
    assert errs == [(1, "ranking"), (2, "ranking"), (3, "ranking"), (4, "response_a")]
    # RM Studio's own export (label and ranking lines carry key and origin) is detected as mixed
    exported = [dict(CMP, key="k1", origin=None), dict(RANK, key="k2", origin="import:x"), unlabeled]
    assert detect_format(jsonl(*exported)) == "mixed"
    assert [r.kind for r in ok(jsonl(*exported))] == ["comparison", "ranking", "unlabeled"]
    assert [type(r).__name__ for r in parse(jsonl(*exported), format="comparisons")] == ["ImportRecord", "RowError", "RowError"]


# ---------------------------------------------------------------- mapped

LFQA = {"question": "q?", "answer_a": "A", "answer_b": "B", "overall_preference": -1, "justification": "A cites", "doc": None}


def test_mapped_with_winner_values_keeps_unmapped_fields():
    m = "prompt=question,a=answer_a,b=answer_b,winner=overall_preference"
    rows = [LFQA, dict(LFQA, overall_preference=1), dict(LFQA, overall_preference=0.0)]
    recs = ok(jsonl(*rows), mapping=m, winner_values="-1:a,1:b,0:tie", source="expert")
    assert [r.winner for r in recs] == ["a", "b", "tie"]
    assert recs[0].extra == {"justification": "A cites"} and recs[0].source == "expert"
    assert detect_format(jsonl(LFQA), mapping=m) == "mapped"
    err = one_error(jsonl(dict(LFQA, overall_preference=2)), mapping=m, winner_values="-1:a,1:b,0:tie")
    assert err.field == "overall_preference" and "-1, 1, 0" in err.message


def test_mapped_csv_chosen_rejected():
    csv_data = b"q,good,bad,who\nwhat?,yes,no,amy\n\"multi\nline\",y2,n2,\n"
    recs = ok(csv_data, mapping="prompt=q,chosen=good,rejected=bad,annotator=who", filename="t.csv")
    assert [(r.prompt, r.responses, r.annotator, r.line) for r in recs] == [
        ("what?", ["yes", "no"], "amy", 2), ("multi\nline", ["y2", "n2"], "unknown", 3)
    ]


def test_mapping_syntax_errors():
    assert parse_mapping("prompt=q, a=x ,b=y,winner=w") == {"prompt": "q", "a": "x", "b": "y", "winner": "w"}
    assert parse_winner_values("-1:a,1:b,0:tie") == {"-1": "a", "1": "b", "0": "tie"}
    for bad in ["prompt=q", "prompt=q,a=x,b=y", "prompt=q,a=x,b=y,winner=w,chosen=c,rejected=r", "prompt", "nope=q,a=x,b=y,winner=w"]:
        with pytest.raises(ValueError):
            parse_mapping(bad)
    with pytest.raises(ValueError, match="outcomes"):
        parse_winner_values("-1:first")
    with pytest.raises(FormatError, match=r"f.jsonl:0: field '--map'"):
        parse(jsonl(LFQA), mapping="prompt=question")
    with pytest.raises(FormatError, match="which the file lacks"):
        parse(jsonl(LFQA), mapping="prompt=query,a=answer_a,b=answer_b,winner=overall_preference")


# ---------------------------------------------------------------- containers, encodings, file-level errors

def test_gzip_json_array_tsv_parquet_and_bom():
    assert len(ok(gzip.compress(jsonl(CMP, CMP)), filename="x.jsonl.gz")) == 2
    assert len(ok(json.dumps([CMP, CMP]).encode(), filename="x.json")) == 2
    tsv = b"prompt\tresponse_a\tresponse_b\twinner\n2+2?\t4\t5\tb\n"
    assert ok(tsv, filename="x.tsv")[0].winner == "b"
    buf = io.BytesIO()
    pq.write_table(pa.table({k: [v] for k, v in CMP.items()}), buf)
    [rec] = ok(buf.getvalue(), filename="x.parquet")
    assert rec.responses == ["4", "5"]
    assert ok(codecs.BOM_UTF8 + jsonl(CMP))[0].prompt == "2+2?"
    assert ok(json.dumps(CMP).encode("utf-16"))[0].prompt == "2+2?"


def test_bad_lines_are_row_errors_with_line_numbers():
    data = jsonl(CMP) + b"{not json\n" + b"\n" + b'"just a string"\n' + b'{"prompt": "\xff\xfe"}\n' + b'{"x": NaN}\n'
    out = parse(data, format="comparisons", filename="m.jsonl")
    errs = [(e.line, e.field) for e in out if isinstance(e, RowError)]
    assert errs == [(2, "json"), (4, "json"), (5, "encoding"), (6, "json")]
    assert "UTF-8" in [e for e in out if isinstance(e, RowError)][2].message


@pytest.mark.parametrize(
    "data, field",
    [
        (b"", "file"),
        (b"   \n\n", "file"),
        (gzip.compress(jsonl(CMP))[:-12], "gzip"),
        (b"PAR1 not really parquet", "parquet"),
        (jsonl({"foo": 1}), "format"),
        (b"a,a\n1,2\n", "header"),
        (b"\x00\x01\x02", "file"),
    ],
)
def test_file_level_errors(data, field):
    with pytest.raises(FormatError) as ei:
        list(parse_file(data, filename="bad.jsonl"))
    assert ei.value.field == field and str(ei.value).startswith("bad.jsonl:")


def test_bad_options_are_format_errors():
    for kw, field in [({"format": "xml"}, "--format"), ({"source": "robot"}, "--source"), ({"split": "dev"}, "--split"),
                      ({"winner_values": "1:a"}, "--winner-values"), ({"format": "trl", "mapping": "prompt=q,a=x,b=y,winner=w"}, "--map")]:
        with pytest.raises(FormatError) as ei:
            parse(jsonl(CMP), **kw)
        assert ei.value.field == field


# ---------------------------------------------------------------- upload preview

def test_preview_reports_format_columns_rows_and_errors():
    from db.importer import preview

    data = jsonl(*[dict(CMP, prompt=f"q{i}") for i in range(30)], dict(CMP, winner="?"))
    pv = preview(data, filename="up.jsonl", n=5)
    assert (pv.format, pv.container, pv.n_records, pv.n_errors, pv.complete) == ("comparisons", "jsonl", 30, 1, True)
    assert pv.columns == ["prompt", "response_a", "response_b", "winner"]
    assert [r["prompt"] for r in pv.rows] == [f"q{i}" for i in range(5)] and pv.rows[0]["responses"] == ["4", "5"]
    assert [(e.line, e.field) for e in pv.errors] == [(31, "winner")]
    assert not preview(data, filename="up.jsonl", scan_limit=10).complete
    bad = preview(jsonl(LFQA), filename="lfqa.jsonl")  # unknown layout: the error, plus the columns to map
    assert bad.format is None and bad.errors[0].field == "format" and "overall_preference" in bad.columns
    mapped = preview(jsonl(LFQA), mapping={"prompt": "question", "a": "answer_a", "b": "answer_b", "winner": "overall_preference"},
                     winner_values="-1:a,1:b,0:tie", filename="lfqa.jsonl")
    assert mapped.format == "mapped" and mapped.rows[0]["winner"] == "a"


# ---------------------------------------------------------------- field names, CSV quotes, detection past bad rows

@pytest.mark.parametrize("raw_key, shown", [('"bad\\ud800key"', "bad\\ud800key"), ('"nul\\u0000key"', "nul\\x00key")])
def test_a_field_name_no_database_can_store_is_refused_with_line_and_field(raw_key, shown):
    line = json.dumps(CMP)[:-1] + f", {raw_key}: 1}}"
    data = (json.dumps(CMP) + "\n" + line + "\n").encode()
    err = one_error(data)
    assert (err.line, err.field) == (2, shown) and "name" in err.message
    str(err).encode("utf-8")  # printable: the name is escaped, not written raw
    nested = one_error(jsonl(CMP, dict(CMP, extra={"ok": 1}, note={"in\u0000side": 1})))
    assert (nested.line, nested.field) == (2, "note.in\\x00side")


def test_a_field_named_twice_or_also_inside_extra_is_refused():
    err = one_error(jsonl(CMP) + b'{"prompt": "p", "response_a": "x", "response_b": "y", "winner": "a", "note": 1, "note": 2}\n')
    assert (err.line, err.field) == (2, "note") and "twice" in err.message
    err = one_error(jsonl(CMP, dict(CMP, note=1, extra={"note": 2})))
    assert (err.line, err.field) == (2, "note") and "extra" in err.message
    [rec] = ok(jsonl(dict(CMP, note=1, extra={"other": 2})))
    assert rec.extra == {"other": 2, "note": 1}


def test_csv_header_with_a_nul_is_a_file_error():
    with pytest.raises(FormatError) as ei:
        list(parse_file(b"prompt,response_a,response_b,winner,no\x00te\nq,a,b,a,1\n", filename="x.csv"))
    assert (ei.value.line, ei.value.field) == (1, "header") and "no\\x00te" in str(ei.value)


def test_an_unclosed_csv_quote_is_reported_where_it_opened_and_the_rows_after_it_are_read():
    rows = [f"q{i},a{i},b{i},a" for i in range(1, 41)]
    rows[4] = 'q5,"a5 never closed,b5,a'
    data = ("prompt,response_a,response_b,winner\n" + "\n".join(rows) + "\n").encode()
    out = parse(data, filename="x.csv")
    errs = [e for e in out if isinstance(e, RowError)]
    assert len(errs) == 1 and (errs[0].line, errs[0].field) == (6, "csv")
    assert "quoted field opened on line 6" in errs[0].message and "read again" in errs[0].message
    assert [r.prompt for r in out if isinstance(r, ImportRecord)] == [f"q{i}" for i in range(1, 41) if i != 5]
    # a quote closing in the middle of a later field (strict CSV): the same report, nothing glued together
    rows[20] = 'q21,"a21",b21,a'
    rows[30] = 'q31,a"31,"b31" x,a'
    out = parse(("prompt,response_a,response_b,winner\n" + "\n".join(rows) + "\n").encode(), filename="x.csv")
    assert sum(isinstance(r, ImportRecord) for r in out) >= 37
    assert all("a5 never closed" not in r.responses[0] for r in out if isinstance(r, ImportRecord))
    # a legitimate quoted field over several lines is one cell
    [rec] = ok(b'prompt,response_a,response_b,winner\n"line 1\nline 2\n",a,b,a\n', filename="x.csv")
    assert rec.prompt == "line 1\nline 2\n"


@pytest.mark.parametrize("junk", [b"{not json\n", b'{"foo": 1}\n', b'{"prompt": "p", "winner": "?"}\n'])
def test_detection_reads_past_bad_first_rows(junk):
    data = junk * 25 + jsonl(*[dict(CMP, prompt=f"q{i}") for i in range(3)])
    out = parse(data)
    assert detect_format(data) == "comparisons"
    assert sum(isinstance(r, ImportRecord) for r in out) == 3 and sum(isinstance(r, RowError) for r in out) == 25


# ---------------------------------------------------------------- numeric verdicts, several verdict columns, keys

def test_winner_scale_maps_numbers_to_verdicts_and_strength():
    from db.formats import parse_winner_scale

    assert parse_winner_scale("1:a,2:b") == ((1.0, "a"), (2.0, "b")) == parse_winner_scale("2:b, 1:a")
    assert parse_winner_scale("-1:b,1:a") == ((-1.0, "b"), (1.0, "a"))
    for bad in ("1:a", "1:a,1:b", "1:a,2:a", "x:a,2:b", "1:a,2:tie", "nan:a,2:b"):
        with pytest.raises(ValueError):
            parse_winner_scale(bad)
    rows = [{"instruction": f"i{k}", "output_1": "x", "output_2": "y", "preference": v}
            for k, v in enumerate([1.0000002, 1.25, 1.5, 1.75, 2, "1.93", 1.4999])]
    m = "prompt=instruction,a=output_1,b=output_2,winner=preference"
    recs = ok(jsonl(*rows), mapping=m, winner_scale="1:a,2:b")
    assert [(r.winner, r.strength) for r in recs] == [("a", 2), ("a", 2), ("tie", None), ("b", 2), ("b", 2), ("b", 2), ("a", 1)]
    assert recs[1].extra == {"preference": 1.25} and recs[5].extra == {"preference": 1.93}
    for bad, why in ((0.5, "outside"), ("high", "must be a number"), (None, "missing"), (True, "must be a number")):
        err = one_error(jsonl(dict(rows[0], preference=bad)), mapping=m, winner_scale="1:a,2:b")
        assert err.field == "preference" and why in err.message
    for kw, field in (({"winner_scale": "1:a,2:b", "winner_values": "1:a"}, "--winner-scale"),
                      ({"winner_scale": "1:a,2:b", "mapping": m + ",strength=x"}, "--winner-scale")):
        with pytest.raises(FormatError) as ei:
            parse(jsonl(rows[0]), **{"mapping": m, **kw})
        assert ei.value.field == field


def test_several_verdict_columns_give_one_label_per_annotator_column():
    rows = [{"q": "Q1", "r1": "x", "r2": "y", "annotator1": 1, "annotator2": 2, "annotator3": 0},
            {"q": "Q2", "r1": "x", "r2": "y", "annotator1": 1, "annotator2": 7, "annotator3": 1}]
    m = "prompt=q,a=r1,b=r2,winner=annotator1|annotator2|annotator3"
    out = parse(jsonl(*rows), mapping=m, winner_values="1:a,2:b,0:tie")
    assert [(r.line, r.annotator, r.winner) for r in out if isinstance(r, ImportRecord)] == [
        (1, "annotator1", "a"), (1, "annotator2", "b"), (1, "annotator3", "tie"), (2, "annotator1", "a"), (2, "annotator3", "a")]
    [err] = [r for r in out if isinstance(r, RowError)]
    assert (err.line, err.field) == (2, "annotator2")
    assert len({r.key for r in out if isinstance(r, ImportRecord)}) == 5
    for kw in ({"annotator": "bob"}, {"mapping": m + ",annotator=q"}):
        with pytest.raises(FormatError, match="each column's name is its annotator"):
            parse(jsonl(*rows), **{"mapping": m, "winner_values": "1:a,2:b,0:tie", **kw})
    with pytest.raises(ValueError, match="twice"):
        parse_mapping("prompt=q,a=r1,b=r2,winner=x|x")


def test_keys_follow_what_is_stored():
    """The same row read through another verdict column or for another annotator is another label; read the
    same way again, the same label (same key). Native records without options keep their plain key."""
    row = {"q": "Q", "r1": "x", "r2": "y", "annotator1": 1, "annotator2": 2, "annotator3": 1}
    m = "prompt=q,a=r1,b=r2,winner="
    key = lambda col, **kw: ok(jsonl(row), mapping=m + col, winner_values="1:a,2:b", **kw)[0].key  # noqa: E731
    assert key("annotator1", annotator="a1") == key("annotator1", annotator="a1")
    assert len({key("annotator1", annotator="a1"), key("annotator2", annotator="a2"), key("annotator1", annotator="a2"),
                key("annotator2", annotator="a1"), key("annotator1")}) == 5
    # the same verdict by the same annotator from another column is the same stored judgment
    assert key("annotator3", annotator="a1") == key("annotator1", annotator="a1")
    # several columns at once give the keys of the column-by-column imports named like the columns
    multi = ok(jsonl(row), mapping=m + "annotator1|annotator2", winner_values="1:a,2:b")
    assert [r.key for r in multi] == [key("annotator1", annotator="annotator1"), key("annotator2", annotator="annotator2")]
    plain = ok(jsonl(CMP))[0].key
    assert ok(jsonl(CMP))[0].key == plain and ok(jsonl(CMP), annotator="bob")[0].key != plain
    assert ok(jsonl(CMP), source="crowd", annotator="unknown")[0].key == plain  # the defaults: the same judgment
    assert ok(jsonl(dict(CMP, annotator="amy")), annotator="bob")[0].key == ok(jsonl(dict(CMP, annotator="amy")))[0].key


def test_messages_name_options_for_each_interface():
    with pytest.raises(FormatError) as ei:
        parse(jsonl({"x": 1}))
    cli = str(ei.value)
    field, message = ei.value.row_error.describe(ui=True)
    assert "--format" in cli and "--map" in cli
    assert "--" not in message and "Format" in message and "Field mapping" in message and field == "format"
    err = one_error(jsonl(dict(LFQA, overall_preference=5)), mapping="prompt=question,a=answer_a,b=answer_b,"
                    "winner=overall_preference", winner_values="-1:a,1:b")
    assert "--winner-values maps only" in str(err) and err.describe(ui=True)[1].endswith("Verdict values maps only -1, 1")
