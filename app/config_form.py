"""The Train form's settings: one widget per ``TrainConfig`` field the form offers (a ``FormSpec`` in the field's
metadata), drawn from the field's metadata, and the ``TrainConfig`` those widgets describe.

The widget follows the field's rule: a choice is a select box, a switch a checkbox, a number a number input within
the field's range (an optional one at 0 means "the mode's default"), per-source weights one slider per source, a
subset of sources a multiselect, anything else a text input (left empty: the field's default). The label, the
section (always in view, or under "More settings") and the help come from the metadata too, so a field gains its
widget by declaring a ``FormSpec``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import streamlit as st

from db.bounds import Bound, Choice, Switch, rule_of
from rm_engine.config import FormSpec, TrainConfig, form_fields

KEY_PREFIX = "tr_"
Field = dataclasses.Field  # type: ignore[type-arg]


def widget_keys() -> dict[str, str]:
    """The session-state key of each form field's widget (``"source_weights.ai"``: one per source)."""
    keys: dict[str, str] = {}
    for f, _ in form_fields():
        for item in f.metadata.get("weights_of", ()):
            keys[f"{f.name}.{item}"] = f"{KEY_PREFIX}{f.name}_{item}"
        if "weights_of" not in f.metadata:
            keys[f.name] = KEY_PREFIX + f.name
    return keys


def render_section(section: str, per_row: int) -> None:
    """Draw the widgets of the form fields in ``section`` (``FormSpec.section``), ``per_row`` to a row in
    declaration order; per-source weights take a row of their own."""
    row: list[tuple[Field, FormSpec]] = []

    def flush() -> None:
        if row:
            for col, (f, spec) in zip(st.columns(per_row, vertical_alignment="bottom"), row):
                _widget(col, f, spec)
            row.clear()

    for f, spec in form_fields():
        if spec.section != section:
            continue
        if "weights_of" in f.metadata:
            flush()
            _weights(f, spec)
            continue
        row.append((f, spec))
        if len(row) == per_row:
            flush()
    flush()


def _default(f: Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def _widget(col: Any, f: Field, spec: FormSpec) -> None:
    rule, key, text = rule_of(f), KEY_PREFIX + f.name, f.metadata.get("help")
    default = _default(f)
    if isinstance(rule, Choice):
        col.selectbox(spec.label, list(rule.values), index=rule.values.index(default), key=key, help=text)
    elif isinstance(rule, Switch):
        col.checkbox(spec.label, value=default, key=key, help=text)
    elif isinstance(rule, Bound):
        hi = spec.hi if spec.hi is not None else rule.hi
        label = f"{spec.label} (0 = mode default)" if rule.optional else spec.label
        lo = 0 if rule.optional else rule.lo
        value = 0 if default is None else default
        if rule.integer:
            col.number_input(label, min_value=int(lo), max_value=int(hi), value=int(value), key=key, help=text)
        else:
            col.number_input(label, min_value=float(lo), max_value=float(hi), value=float(value), step=spec.step,
                             format="%g", key=key, help=text)
    elif "subset_of" in f.metadata:
        items = list(f.metadata["subset_of"])
        col.multiselect(spec.label, items, default=list(default or items), key=key, help=text)
    else:
        col.text_input(spec.label, str(default), key=key, help=text)


def _weights(f: Field, spec: FormSpec) -> None:
    rule, default, items = f.metadata.get("bound"), _default(f), f.metadata["weights_of"]
    hi = spec.hi if spec.hi is not None else (rule.hi if rule is not None else 1.0)
    for col, item in zip(st.columns(len(items)), items):
        col.slider(spec.label.format(item), 0.0, float(hi), float(default[item]), spec.step,
                   key=f"{KEY_PREFIX}{f.name}_{item}", help=f.metadata.get("help"))


def form_values(state: Mapping[str, Any]) -> dict[str, Any]:
    """The ``TrainConfig`` fields the form's widgets hold in ``state`` (a widget not drawn: the field's default)."""
    out: dict[str, Any] = {}
    for f, _ in form_fields():
        rule, key, default = rule_of(f), KEY_PREFIX + f.name, _default(f)
        if "weights_of" in f.metadata:
            out[f.name] = {item: float(state.get(f"{key}_{item}", default[item])) for item in f.metadata["weights_of"]}
            continue
        if key not in state:
            continue
        value = state[key]
        if isinstance(rule, Bound):
            value = None if rule.optional and not value else int(value) if rule.integer else float(value)
        elif isinstance(rule, Switch):
            value = bool(value)
        elif "subset_of" in f.metadata:
            chosen = tuple(value)
            value = None if set(chosen) == set(f.metadata["subset_of"]) else chosen
        elif rule is None:
            value = str(value or "").strip() or default
        out[f.name] = value
    return out


def config_from_state(state: Mapping[str, Any]) -> TrainConfig:
    """The ``TrainConfig`` the form describes (``ValueError`` naming the bad field)."""
    return TrainConfig(**form_values(state))
