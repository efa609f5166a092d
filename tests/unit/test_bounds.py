"""``db.bounds``: one range check per numeric setting (finite, in range, the right kind of number), and JSON that
never carries NaN or infinity."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from db.bounds import (
    Bound,
    Choice,
    FieldError,
    Switch,
    bound_of,
    check_fields,
    choice,
    finite_json,
    json_dumps,
    rule_of,
    switch,
)
from db.config import Settings
from db.policy import RetrainPolicy
from db.queue_policy import QueuePolicy
from rm_engine.config import TrainConfig
from worker.loop import WorkerConfig

NAN, INF = float("nan"), float("inf")
BOUNDED = [(cls, f.name) for cls in (TrainConfig, WorkerConfig, RetrainPolicy, QueuePolicy, Settings)
           for f in dataclasses.fields(cls) if "bound" in f.metadata]


def test_describe_check_and_parse() -> None:
    b = Bound(0, 10, lo_open=True)
    assert b.describe() == "a finite number > 0 and <= 10"
    assert Bound(1, 64, integer=True).describe() == "a whole number from 1 to 64"
    assert Bound(0, 0.9, hi_open=True).describe() == "a finite number >= 0 and < 0.9"
    assert b.check(3) == 3.0 and isinstance(b.check(3), float)
    assert Bound(1, 9, integer=True).check(3.0) == 3 and Bound(1, 9, integer=True).parse("1e0") == 1
    assert Bound(optional=True).check(None) is None
    for bad in (NAN, INF, -INF, 0, 10.5, True, "3", None, [1]):
        with pytest.raises(FieldError, match=r"^lr: must be a finite number > 0 and <= 10 \(got "):
            b.check(bad, "lr")
    with pytest.raises(FieldError) as info:
        Bound(1, 9, integer=True).parse("2.5", "--epochs", field="epochs")
    assert info.value.field == "epochs" and info.value.value == "2.5" and str(info.value).endswith("(got '2.5')")


@pytest.mark.parametrize("cls,name", BOUNDED, ids=[f"{c.__name__}.{n}" for c, n in BOUNDED])
def test_every_declared_bound_refuses_nan_and_infinity(cls: type, name: str) -> None:
    bound = bound_of(cls, name)
    assert bound.lo is not None and bound.hi is not None  # every numeric setting has both ends
    for bad in (NAN, INF, -INF):
        assert not bound.contains(bad)
        with pytest.raises(FieldError):
            bound.parse(str(bad))


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.booleans(), st.text(max_size=8)))
def test_a_bound_accepts_exactly_the_finite_values_in_its_range(value: object) -> None:
    for bound in (Bound(0, 10, lo_open=True), Bound(1, 64, integer=True), Bound(0, 0.9, hi_open=True)):
        try:
            got = bound.check(value)
        except FieldError as exc:
            assert exc.value is value and "\n" not in str(exc)
            continue
        assert not isinstance(value, (bool, str)) and math.isfinite(got)
        assert bound.lo <= got <= bound.hi and got == value
        assert got != bound.lo or not bound.lo_open
        assert got != bound.hi or not bound.hi_open


def test_check_fields_normalises_a_frozen_dataclass() -> None:
    @dataclasses.dataclass(frozen=True)
    class Knobs:
        n: int = dataclasses.field(default=1, metadata={"bound": Bound(1, 5, integer=True)})
        x: float = dataclasses.field(default=0.5, metadata={"bound": Bound(0, 1)})

        def __post_init__(self) -> None:
            check_fields(self, lambda name: f"knobs.{name}")

    k = Knobs(n=2.0, x=1)  # type: ignore[arg-type]
    assert k == Knobs(2, 1.0) and type(k.n) is int and type(k.x) is float
    with pytest.raises(FieldError, match=r"knobs\.x: must be a finite number from 0 to 1 \(got nan\)"):
        Knobs(x=NAN)


def test_choices_and_switches_are_checked_and_parsed_like_numbers() -> None:
    @dataclasses.dataclass(frozen=True)
    class Knobs:
        kind: str = dataclasses.field(default="a", metadata=choice("a", "b", help="which"))
        on: bool = dataclasses.field(default=False, metadata=switch(help="whether"))

        def __post_init__(self) -> None:
            check_fields(self, lambda name: f"knobs.{name}")

    assert Knobs("b", True).kind == "b"
    with pytest.raises(FieldError, match=r"^knobs\.kind: must be one of a, b \(got 'c'\)$"):
        Knobs(kind="c")
    with pytest.raises(FieldError, match=r"^knobs\.on: must be true or false \(got 1\)$"):
        Knobs(on=1)  # type: ignore[arg-type]
    kind, on = dataclasses.fields(Knobs)
    assert isinstance(rule_of(kind), Choice) and rule_of(kind).parse(" b ", "--kind") == "b"
    assert [rule_of(on).parse(t) for t in ("1", "Yes", "on", "0", "false", "OFF")] == [True] * 3 + [False] * 3
    with pytest.raises(FieldError, match=r"^KNOBS_ON: must be true or false \(1, 0, yes, no, on, off\) \(got 'maybe'\)$"):
        rule_of(on).parse("maybe", "KNOBS_ON", field="on")
    with pytest.raises(FieldError, match="one of a, b"):
        rule_of(kind).parse("c", "--kind")
    assert kind.metadata["help"] == "which" and isinstance(rule_of(on), Switch)


def test_json_never_carries_nan_or_infinity() -> None:
    obj = {"a": NAN, "b": [1.5, INF, {"c": -INF}], "d": (2, "x"), "e": None}
    assert finite_json(obj) == {"a": None, "b": [1.5, None, {"c": None}], "d": [2, "x"], "e": None}
    assert json.loads(json_dumps(obj)) == finite_json(obj)
    assert json_dumps({"k": 1.0}) == json.dumps({"k": 1.0})
