"""The Data page under AppTest: upload, detection, preview, mapping, errors by line, import, upload cap,
queue policy. Real SQLite database."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from db.labeling import QueuePolicy, load_queue_policy
from db.models import Label, Outcome, Prompt
from db.session import Database
from tests.app.conftest import PAGES

DATA = str(PAGES / "data.py")


def _jsonl(rows: list[dict]) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def _count(db: Database, model: type) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(model)))


def _page() -> AppTest:
    return AppTest.from_file(DATA, default_timeout=60).run()


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _import_button(at: AppTest):
    return at.button(key="data_import")


TRL_ROWS = [{"prompt": f"Question {i}?", "chosen": f"Good answer {i}", "rejected": f"Bad answer {i}"} for i in range(5)]


def test_upload_preview_and_import_trl(app_env, sqlite_db: Database) -> None:
    at = _page()
    assert not at.exception
    assert any("rmstudio seed-demo" in i.value for i in at.info)  # empty database teaches
    at.file_uploader(key="data_upload").upload("prefs.jsonl", _jsonl(TRL_ROWS)).run()
    assert not at.exception
    m = _metrics(at)
    assert m["Detected format"] == "trl" and m["Valid records"] == "5" and m["Invalid rows"] == "0"
    assert at.dataframe, "no preview table"
    assert _count(sqlite_db, Label) == 0  # preview writes nothing
    _import_button(at).click().run()
    assert not at.exception
    assert any("5 labels" in s.value for s in at.success)
    assert _count(sqlite_db, Label) == 5 and _count(sqlite_db, Prompt) == 5
    assert [p.value for p in at.get("progress")] == [100]


def test_errors_shown_by_line_and_skip_invalid(app_env, sqlite_db: Database) -> None:
    rows = [TRL_ROWS[0], {"prompt": "No chosen here", "rejected": "x"}, TRL_ROWS[1], {"prompt": "", "chosen": "a", "rejected": "b"}]
    at = _page()
    at.file_uploader(key="data_upload").upload("bad.jsonl", _jsonl(rows)).run()
    assert not at.exception
    assert _metrics(at)["Invalid rows"] == "2"
    errs = next(d.value for d in at.dataframe if "problem" in d.value.columns)
    assert sorted(errs["line"].tolist()) == [2, 4], errs
    assert _import_button(at).disabled
    at.checkbox[0].check().run()  # skip invalid rows
    assert not _import_button(at).disabled
    _import_button(at).click().run()
    assert not at.exception
    assert _count(sqlite_db, Label) == 2
    assert any("2 invalid rows were skipped" in w.value for w in at.warning)


def _stored_verdicts(db: Database) -> dict[str, tuple[str, int | None, str]]:
    """Each label's prompt -> (the winning response's text or the outcome, strength, annotator)."""
    with db.read() as s:
        out = {}
        for lab in s.scalars(select(Label)):
            comp = lab.comparison
            won = {Outcome.a: comp.response_a.text, Outcome.b: comp.response_b.text}.get(lab.outcome, lab.outcome.value)
            out[(comp.prompt.text, lab.annotator.name)] = (won, lab.strength, lab.source.value)
        return out


def _shown_text(at: AppTest) -> str:
    """Everything the page says (messages, captions, tables' cells), to check its wording."""
    parts = [e.value for kind in ("error", "warning", "info", "success", "caption", "markdown") for e in at.get(kind)]
    for d in at.dataframe:
        parts += [str(v) for v in d.value.to_numpy().ravel()] + [str(c) for c in d.value.columns]
    return "\n".join(parts)


def _preview_verdicts(at: AppTest) -> list[str]:
    return next(d.value for d in at.dataframe if "verdict" in d.value.columns)["verdict"].tolist()


LFQA_CSV = (
    b"question,answer_a,answer_b,overall_preference,justification\n"
    b"What is 2+2?,4,5,-1,a is right\n"
    b"Capital of Italy?,Milan,Rome,1,b is right\n"
    b"Colour of sky?,blue,also blue,0,same\n"
)


def test_mapping_proposed_for_lfqa_style_columns(app_env, sqlite_db: Database) -> None:
    """A layout auto-detection does not know: the page proposes the mapping, shows each row's verdict, imports."""
    at = _page()
    at.file_uploader(key="data_upload").upload("lfqa.csv", LFQA_CSV, "text/csv").run()
    assert not at.exception
    assert [at.selectbox(key=f"map_{t}").value for t in ("prompt", "a", "b")] == ["question", "answer_a", "answer_b"]
    assert at.multiselect(key="map_winner").value == ["overall_preference"]
    assert at.radio(key="map_kind").value.startswith("values") and at.text_input(key="map_values").value == "-1:a,1:b,0:tie"
    m = _metrics(at)
    assert m["Detected format"] == "mapped" and m["Valid records"] == "3" and m["Invalid rows"] == "0", m
    assert _preview_verdicts(at) == ["A better", "B better", "tie"]
    assert any("proposed" in i.value for i in at.info)
    at.selectbox(key="data_source").set_value("expert").run()
    _import_button(at).click().run()
    assert not at.exception
    assert _stored_verdicts(sqlite_db) == {("What is 2+2?", "unknown"): ("4", None, "expert"),
                                           ("Capital of Italy?", "unknown"): ("Rome", None, "expert"),
                                           ("Colour of sky?", "unknown"): ("tie", None, "expert")}
    assert "--" not in _shown_text(at)


def test_mapping_proposed_for_auto_j_style_columns(app_env, sqlite_db: Database) -> None:
    rows = [{"scenario": "code", "prompt": f"Task {i}?", "response 1": f"first {i}", "response 2": f"second {i}", "label": v}
            for i, v in enumerate([0, 1, 2, 0])]
    at = _page()
    at.file_uploader(key="data_upload").upload("autoj.jsonl", _jsonl(rows)).run()
    assert not at.exception
    assert [at.selectbox(key=f"map_{t}").value for t in ("prompt", "a", "b", "category")] == [
        "prompt", "response 1", "response 2", "scenario"]
    assert at.multiselect(key="map_winner").value == ["label"] and at.text_input(key="map_values").value == "0:a,1:b,2:tie"
    assert _preview_verdicts(at) == ["A better", "B better", "tie", "A better"]
    _import_button(at).click().run()
    assert not at.exception
    assert _count(sqlite_db, Label) == 4


def test_mapping_proposed_for_alpaca_eval_style_columns(app_env, sqlite_db: Database) -> None:
    """A numeric preference (1..2) becomes a verdict scale: nearer 1 = A, nearer 2 = B, 1.5 a tie, with strength."""
    prefs = [1.0000002, 1.93, 1.5, 1.3]
    rows = [{"instruction": f"Instruction {i}", "output_1": f"one {i}", "output_2": f"two {i}", "generator_1": "gpt4",
             "generator_2": "mine", "preference": p} for i, p in enumerate(prefs)]
    at = _page()
    at.file_uploader(key="data_upload").upload("alpaca.json", json.dumps(rows).encode()).run()
    assert not at.exception
    assert [at.selectbox(key=f"map_{t}").value for t in ("prompt", "a", "b", "model_a", "model_b")] == [
        "instruction", "output_1", "output_2", "generator_1", "generator_2"]
    assert at.radio(key="map_kind").value.startswith("a number scale") and at.text_input(key="map_scale").value == "1:a,2:b"
    assert _preview_verdicts(at) == ["A better (clearly)", "B better (clearly)", "tie", "A better (slightly)"]
    _import_button(at).click().run()
    assert not at.exception
    got = _stored_verdicts(sqlite_db)
    assert [got[(f"Instruction {i}", "unknown")][:2] for i in range(4)] == [
        ("one 0", 2), ("two 1", 2), ("tie", None), ("one 3", 1)]


def test_several_verdict_columns_and_errors_in_the_pages_words(app_env, sqlite_db: Database) -> None:
    """One verdict column per annotator, chosen in the mapping; bad verdict values are explained in the page's
    terms (never as command-line flags)."""
    rows = [{"instruction": f"Q{i}", "response1": f"x{i}", "response2": f"y{i}", "annotator1": i % 3,
             "annotator2": (i + 1) % 3, "annotator3": 1} for i in range(4)]
    at = _page()
    at.file_uploader(key="data_upload").upload("panda.jsonl", _jsonl(rows)).run()
    assert not at.exception
    assert at.multiselect(key="map_winner").value == ["annotator1", "annotator2", "annotator3"]
    assert _metrics(at)["Valid records"] == "12"  # one label per annotator column
    at.text_input(key="map_values").input("1:a,2:b").run()  # forgets 0 (tie)
    assert not at.exception
    shown = _shown_text(at)
    assert "Verdict values maps only 1, 2" in shown and "--" not in shown, shown
    assert _import_button(at).disabled
    at.text_input(key="map_values").input("1:a,2:b,0:tie").run()
    _import_button(at).click().run()
    assert not at.exception
    with sqlite_db.read() as s:
        names = sorted(lab.annotator.name for lab in s.scalars(select(Label)))
    assert names == ["annotator1"] * 4 + ["annotator2"] * 4 + ["annotator3"] * 4


def test_an_export_is_read_as_mixed_and_an_unknown_layout_explained(app_env, sqlite_db: Database) -> None:
    exported = [{"prompt": "2+2?", "response_a": "4", "response_b": "5", "winner": "a", "key": "k1", "origin": None},
                {"prompt": "Say hi.", "responses": [{"text": "hi"}, {"text": "hello"}]}]
    at = _page()
    at.file_uploader(key="data_upload").upload("export.jsonl", _jsonl(exported)).run()
    assert not at.exception
    m = _metrics(at)
    assert m["Detected format"] == "mixed" and m["Valid records"] == "2", m
    assert _preview_verdicts(at) == ["A better", "no verdict (to label)"]
    at2 = _page()
    at2.file_uploader(key="data_upload").upload("odd.jsonl", _jsonl([{"foo": 1, "bar": 2}])).run()
    assert not at2.exception and _metrics(at2)["Detected format"] == "unknown"
    shown = _shown_text(at2)
    assert "cannot tell the format" in shown and "choose the format (Format) or map the columns (Field mapping)" in shown
    assert "--" not in shown and _import_button(at2).disabled


def test_upload_cap(app_env, sqlite_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RMSTUDIO_MAX_UPLOAD_MB", "1")
    big = _jsonl(TRL_ROWS) + b" " * (1024 * 1024 + 10)
    at = _page()
    assert at.file_uploader(key="data_upload").proto.max_upload_size_mb == 1  # the browser refuses bigger files
    at.file_uploader(key="data_upload").upload("huge.jsonl", big).run()
    assert any("limited to 1 MB" in e.value for e in at.error)
    assert not [b for b in at.button if b.key == "data_import"]
    assert _count(sqlite_db, Label) == 0


def test_file_name_is_shown_as_text(app_env, sqlite_db: Database) -> None:
    at = _page()
    at.file_uploader(key="data_upload").upload("<img src=x onerror=alert(1)>[x](javascript:1).jsonl", _jsonl(TRL_ROWS)).run()
    assert not at.exception
    shown = [m for m in at.markdown if "onerror" in m.value]
    assert shown and all(not m.proto.allow_html for m in shown)
    assert all("[x](javascript" not in m.value for m in at.markdown)


def test_queue_policy_form_saves(app_env, sqlite_db: Database) -> None:
    at = _page()
    at.number_input[0].set_value(2)
    at.slider[0].set_value(0.25)
    at.number_input[1].set_value(4)
    at.toggle[0].set_value(True)
    assert any("0 expert-labelled pairs can serve as control pairs" in c.value for c in at.caption)
    at.slider(key="queue_control_share").set_value(0.1)
    at.button(key="FormSubmitter:queue_policy-Save queue policy").click().run()
    assert not at.exception
    with sqlite_db.read() as s:
        assert load_queue_policy(s) == QueuePolicy(target_overlap=2, agreement_share=0.25, agreement_overlap=4,
                                                   active_learning=True, control_share=0.1)


def test_export_download_roundtrip(app_env, sqlite_db: Database, seeded) -> None:
    from db.store import add_label

    with sqlite_db.write() as s:
        add_label(s, comparison_id=seeded.comparison_ids[0], outcome="a", source="expert", annotator="eve",
                  idempotency_key="k1")
    at = _page()
    at.selectbox(key="export_format").set_value("trl")
    at.button(key="export_go").click().run()
    assert not at.exception
    dl = at.get("download_button")
    assert dl and "rmstudio-trl-all.jsonl" in dl[0].proto.label
    assert any("wrote 1 trl records" in c.value for c in at.caption)


def test_statistics_show_tier_advice(app_env, sqlite_db: Database, seeded) -> None:
    from db.store import add_label

    with sqlite_db.write() as s:
        for i, cid in enumerate(seeded.comparison_ids[:3]):
            add_label(s, comparison_id=cid, outcome="b", source="crowd", annotator=f"<b>ann{i}</b>",
                      idempotency_key=f"s{i}")
    at = _page()
    assert not at.exception
    m = _metrics(at)
    assert m["Labels"] == "3" and m["Training pairs"] == "3" and m["Unlabelled pairs"] == "3"
    assert any("Size tier: under 1,000" in i.value and "too few" in i.value for i in at.info)
    assert len(at.get("plotly_chart")) == 2
    annotators = next(d.value for d in at.dataframe if "annotator" in d.value.columns)
    assert sorted(annotators["annotator"]) == ["<b>ann0</b>", "<b>ann1</b>", "<b>ann2</b>"]  # as text, in a table
