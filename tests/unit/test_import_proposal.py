"""The field mapping proposed from a file's columns and values (``db.import_proposal``): the published layouts
(LFQA, Auto-J, AlpacaEval, PandaLM, Chatbot Arena-like), each proposal read back through the importer so that
the verdicts it gives are the ones the file means."""
from __future__ import annotations

import json

import pytest

from db.formats import RowError, parse_file
from db.import_proposal import preview_rows, profile_columns, profile_rows, propose_mapping, verdict_text


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _read(rows: list[dict]) -> list:
    """The file as the proposal reads it (records and errors)."""
    data = _jsonl(rows)
    p = propose_mapping(profile_columns(data, filename="f.jsonl"))
    assert p.complete, p
    return list(parse_file(data, filename="f.jsonl", mapping=p.mapping, winner_values=p.winner_values,
                           winner_scale=p.winner_scale))


CASES = {
    "lfqa": ([{"question": f"q{i}", "answer_a": f"a{i}", "answer_b": f"b{i}", "overall_preference": v, "justification": "j"}
              for i, v in enumerate([-1, 1, 0])],
             {"prompt": "question", "a": "answer_a", "b": "answer_b", "winner": "overall_preference"}, "-1:a,1:b,0:tie", None,
             ["a", "b", "tie"]),
    "auto-j": ([{"scenario": "code", "prompt": f"p{i}", "response 1": f"x{i}", "response 2": f"y{i}", "label": v}
                for i, v in enumerate([0, 1, 2])],
               {"prompt": "prompt", "a": "response 1", "b": "response 2", "winner": "label", "category": "scenario"},
               "0:a,1:b,2:tie", None, ["a", "b", "tie"]),
    "alpaca-eval": ([{"instruction": f"i{n}", "output_1": f"o{n}", "output_2": f"t{n}", "preference": v,
                      "generator_1": "gpt4", "generator_2": "m"} for n, v in enumerate([1.0000002, 1.93, 1.5])],
                    {"prompt": "instruction", "a": "output_1", "b": "output_2", "winner": "preference",
                     "model_a": "generator_1", "model_b": "generator_2"}, None, "1:a,2:b", ["a", "b", "tie"]),
    "arena-like": ([{"question": f"q{i}", "model_a": "m1", "model_b": "m2", "response_a": f"a{i}", "response_b": f"b{i}",
                     "winner": w} for i, w in enumerate(["model_a", "model_b", "tie (bothbad)"])],
                   {"prompt": "question", "a": "response_a", "b": "response_b", "winner": "winner", "model_a": "model_a",
                    "model_b": "model_b"}, None, None, ["a", "b", "both_bad"]),
    "words": ([{"query": f"q{i}", "answer_a": f"a{i}", "answer_b": f"b{i}", "choice": w}
               for i, w in enumerate(["Response 1", "Response 2", "Tie"])],
              {"prompt": "query", "a": "answer_a", "b": "answer_b", "winner": "choice"},
              "Response 1:a,Response 2:b,Tie:tie", None, ["a", "b", "tie"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_proposal_for_published_layouts(name):
    rows, mapping, values, scale, winners = CASES[name]
    p = propose_mapping(profile_rows(rows))
    assert (p.mapping, p.winner_values, p.winner_scale) == (mapping, values, scale)
    assert p.notes and all(isinstance(n, str) for n in p.notes)
    recs = _read(rows)
    assert not [r for r in recs if isinstance(r, RowError)]
    assert [r.winner for r in recs] == winners


def test_several_annotator_columns_become_one_label_each():
    rows = [{"instruction": f"i{n}", "input": "", "response1": f"x{n}", "response2": f"y{n}", "annotator1": v,
             "annotator2": (v + 1) % 3, "annotator3": 2} for n, v in enumerate([0, 1, 2])]
    p = propose_mapping(profile_rows(rows))
    assert p.mapping["winner"] == "annotator1|annotator2|annotator3" and p.winner_values == "1:a,2:b,0:tie"
    recs = _read(rows)
    assert [(r.annotator, r.winner) for r in recs[:3]] == [("annotator1", "tie"), ("annotator2", "a"), ("annotator3", "b")]
    assert len(recs) == 9


def test_chosen_rejected_and_incomplete_proposals():
    p = propose_mapping(profile_rows([{"question": "q", "chosen": "x", "rejected": "y"}]))
    assert p.mapping == {"prompt": "question", "chosen": "chosen", "rejected": "rejected"} and p.complete
    p = propose_mapping(profile_rows([{"question": "q", "answer_a": "x", "answer_b": "y", "notes": "free text"}]))
    assert "winner" not in p.mapping and not p.complete and any("no verdict column" in n for n in p.notes)
    assert propose_mapping(profile_rows([{"foo": 1, "bar": 2}])).mapping == {}
    assert profile_columns(b"\x00\x01 not a file", filename="x.bin") == []


def test_verdict_words_and_preview_rows():
    assert verdict_text({"kind": "comparison", "winner": "a", "strength": 2}) == "A better (clearly)"
    assert verdict_text({"kind": "comparison", "winner": "b", "strength": 1}) == "B better (slightly)"
    assert verdict_text({"kind": "comparison", "winner": "both_bad", "strength": None}) == "both bad"
    assert verdict_text({"kind": "ranking", "ranks": [2, 1, 3]}) == "ranked 2, 1, 3"
    assert verdict_text({"kind": "unlabeled", "winner": None}) == "no verdict (to label)"
    [row] = preview_rows([{"line": 3, "kind": "comparison", "prompt": "p" * 500, "responses": ["x", "y"], "winner": "tie",
                           "strength": None, "annotator": "ann", "source": "crowd", "split": "train"}])
    assert (row["line"], row["verdict"], row["response A"], row["response B"], len(row["prompt"])) == (3, "tie", "x", "y", 200)
