"""The Train form offers every ``TrainConfig`` field meant for it (a ``FormSpec`` in the field's metadata), each
widget drawn from that metadata, and what each widget holds reaches the queued job: derived from the fields, not
listed by hand."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from app.train_actions import FORM_KEYS
from db.bounds import Bound, Choice, Switch, rule_of
from db.models import Job
from db.session import Database
from rm_engine.config import TrainConfig, form_fields
from tests.app.conftest import PAGES, Seeded
from tests.tiny_models import build_tiny_encoder

WIDGETS = ("selectbox", "checkbox", "number_input", "text_input", "multiselect", "slider")


def _widget(at: AppTest, key: str) -> Any:
    found = [w for kind in WIDGETS for w in getattr(at, kind) if w.key == key]
    assert len(found) == 1, f"the form has {len(found)} widgets with key {key!r}"
    return found[0]


def _changed(f: Any, home: Path) -> tuple[Any, Any]:
    """A value other than the field's default for its widget, and the job parameter it must become."""
    rule, default = rule_of(f), TrainConfig().to_dict()[f.name]
    if isinstance(rule, Choice):
        value = next(v for v in reversed(rule.values) if v != default)
        return value, value
    if isinstance(rule, Switch):
        return not default, not default
    if isinstance(rule, Bound):
        value = (rule.lo or 0) + 1 if rule.integer else (rule.hi or 1) / 4
        return value, int(value) if rule.integer else value
    if "subset_of" in f.metadata:
        items = list(f.metadata["subset_of"])[:1]
        return items, items
    if "weights_of" in f.metadata:
        return 0.25, {item: 0.25 for item in f.metadata["weights_of"]}
    path = str(build_tiny_encoder(home / "models" / "tiny", hidden=32, layers=1))  # a folder the worker accepts
    return path, path


def test_every_field_meant_for_the_form_has_its_widget_and_reaches_the_job(app_env: Path, sqlite_db: Database,
                                                                           seeded: Seeded) -> None:
    offered = form_fields()
    assert {f.name for f, _ in offered} >= {"mode", "backbone", "epochs", "ensemble", "lr", "lora", "pooling",
                                            "source_weights", "sources", "length_covariate", "annotator_weights"}
    at = AppTest.from_file(str(PAGES / "train.py"), default_timeout=30).run()
    assert not at.exception
    want: dict[str, Any] = {}
    for f, spec in offered:
        value, want[f.name] = _changed(f, app_env)
        items = f.metadata.get("weights_of")
        for key in [FORM_KEYS[f"{f.name}.{i}"] for i in items] if items else [FORM_KEYS[f.name]]:
            widget = _widget(at, key)
            assert widget.label.startswith(spec.label.split("{}")[0])  # the label of its FormSpec
            assert widget.help == f.metadata["help"]  # the field's one help text
            widget.set_value(value)
    next(b for b in at.button if b.label == "Enqueue training").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    with sqlite_db.read() as s:
        [params] = [j.params for j in s.scalars(select(Job))]
    assert {name: params[name] for name in want} == want
    assert TrainConfig.from_dict(params)  # the worker takes it as it is
