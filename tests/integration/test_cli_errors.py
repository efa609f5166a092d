"""Every refusal of the command line is one readable line: usage errors of every subcommand, and any value of any
numeric flag, which is either accepted (and stored in range) or refused naming the flag, storing nothing."""
from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from cli import build_parser, main
from cli.common import PORT
from cli.model_cmds import PENALTY
from db.bounds import Bound, bound_of
from db.labeling import load_queue_policy
from db.models import Job
from db.policy import RetrainPolicy, get_policy
from db.queue_policy import QueuePolicy
from db.session import Database
from rm_engine.config import MAX_FOLDS, MIN_FOLDS, TrainConfig
from worker.loop import WorkerConfig


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], tuple[str, list[str]]]:
    """Every subcommand path (``("jobs", "cancel")``): its prog and the flags that take a value."""
    out: dict[tuple[str, ...], tuple[str, list[str]]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                valued = [a.option_strings[-1] for a in sub._actions
                          if isinstance(a, argparse._StoreAction) and a.option_strings]
                out[(*path, name)] = (sub.prog, valued)
                out.update(_commands(sub, (*path, name)))
    return out


COMMANDS = _commands(build_parser())


def test_the_walk_finds_the_subcommands() -> None:
    assert {("train",), ("worker",), ("jobs", "cancel"), ("reward-server",), ("cv",), ("import",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=[" ".join(p) for p in sorted(COMMANDS)])
def test_usage_errors_are_one_line_with_a_pointer_to_help(home, capsys: pytest.CaptureFixture[str],
                                                          path: tuple[str, ...]) -> None:
    """An unknown flag, and a flag given without its value (reported by the subcommand's own parser, which used
    to print its whole usage block first)."""
    prog, valued = COMMANDS[path]
    for argv in ([*path, "--no-such-flag"], *([[*path, valued[0]]] if valued else [])):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert err.startswith(f"{prog}: error: ") and err.endswith(f"; see {prog} --help\n"), err


def test_a_bad_value_is_reported_by_its_subcommand(home, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--epochs", "many"]) == 2
    assert capsys.readouterr().err == ("rmstudio train: error: argument --epochs: must be a whole number from 1 to "
                                       "1000000 (got 'many'); see rmstudio train --help\n")
    assert main(["bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rmstudio: error: argument COMMAND: invalid choice: 'bogus'") and err.count("\n") == 1


# ------------------------------------------------------------------ property-based: any value of any numeric flag

#: Text a user (or a script) might pass: numbers of every size and kind, NaN and infinity spelled every way, junk.
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-10**20, max_value=10**20).map(str),
    st.sampled_from(["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "", " ", "0x10", "1_000",
                     "3.0", "2.5", "1e3", "0", "-0", "-1", "abc", "--", "1,5"]),
    st.text(max_size=12),
)
HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

TRAIN_FLAGS = {"--" + f.name.replace("_", "-"): f.name for f in dataclasses.fields(TrainConfig)
               if "bound" in f.metadata}


def _refused_in_one_line(rc: int, err: str, flag: str) -> None:
    assert rc in (1, 2), err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and "Traceback" not in err, err


def _jobs(db: Database) -> list[dict]:
    with db.read() as s:
        return [dict(j.params) for j in s.scalars(select(Job).order_by(Job.id))]


@HYPOTHESIS
@given(flag=st.sampled_from(sorted(TRAIN_FLAGS)), value=VALUES)
def test_train_flags_store_values_in_range_or_refuse_them(sqlite_db: Database, capsys: pytest.CaptureFixture[str],
                                                          flag: str, value: str) -> None:
    before = _jobs(sqlite_db)
    rc = main(["train", f"{flag}={value}", "--json"])
    out, err = capsys.readouterr()
    after = _jobs(sqlite_db)
    if rc == 0:
        field = TRAIN_FLAGS[flag]
        stored = after[-1][field]
        assert len(after) == len(before) + 1 and json.loads(out)["queued"]
        assert bound_of(TrainConfig, field).contains(stored), (flag, value, stored)
        assert TrainConfig.from_dict({k: v for k, v in after[-1].items()}) is not None  # the worker accepts it
    else:
        _refused_in_one_line(rc, err, flag)
        assert after == before


@HYPOTHESIS
@given(flag=st.sampled_from(["--min-new-labels", "--min-interval", "--labels-per-pair", "--agreement-share",
                             "--agreement-overlap", "--control-share"]), value=VALUES)
def test_policy_flags_store_values_in_range_or_refuse_them(sqlite_db: Database, capsys: pytest.CaptureFixture[str],
                                                           flag: str, value: str) -> None:
    command, field, cls = {
        "--min-new-labels": ("policy", "min_new_labels", RetrainPolicy),
        "--min-interval": ("policy", "min_interval_s", RetrainPolicy),
        "--labels-per-pair": ("queue", "target_overlap", QueuePolicy),
        "--agreement-share": ("queue", "agreement_share", QueuePolicy),
        "--agreement-overlap": ("queue", "agreement_overlap", QueuePolicy),
        "--control-share": ("queue", "control_share", QueuePolicy),
    }[flag]

    def stored() -> tuple[RetrainPolicy, QueuePolicy]:
        with sqlite_db.read() as s:
            return get_policy(s), load_queue_policy(s)

    before = stored()
    rc = main([command, f"{flag}={value}", "--json"])
    _, err = capsys.readouterr()
    after = stored()
    if rc == 0:
        value_now = getattr(after[0] if cls is RetrainPolicy else after[1], field)
        assert bound_of(cls, field).contains(value_now), (flag, value, value_now)
    else:
        _refused_in_one_line(rc, err, flag)
        assert after == before


@HYPOTHESIS
@given(flag=st.sampled_from(["--lease", "--poll-interval", "--gpus", "--max-jobs", "--folds", "--limit"]),
       value=VALUES)
def test_worker_cv_and_jobs_flags_run_with_values_in_range_or_refuse_them(
        sqlite_db: Database, capsys: pytest.CaptureFixture[str], flag: str, value: str) -> None:
    argv, bound = {
        "--lease": (["worker", "--once", "--no-preload", "--no-auto-retrain"], bound_of(WorkerConfig, "lease_s")),
        "--poll-interval": (["worker", "--once", "--no-preload", "--no-auto-retrain"],
                            bound_of(WorkerConfig, "poll_interval_s")),
        "--gpus": (["worker", "--once", "--no-preload", "--no-auto-retrain"], bound_of(WorkerConfig, "gpus")),
        "--max-jobs": (["worker", "--once", "--no-preload", "--no-auto-retrain"], bound_of(WorkerConfig, "max_jobs")),
        "--folds": (["cv", "--queue", "--json"], Bound(MIN_FOLDS, MAX_FOLDS, integer=True)),
        "--limit": (["jobs", "--json"], Bound(1, 100_000, integer=True)),
    }[flag]
    before = _jobs(sqlite_db)
    rc = main([*argv, f"{flag}={value}"])
    _, err = capsys.readouterr()
    after = _jobs(sqlite_db)
    if rc == 0:
        assert bound.contains(bound.parse(value))
        if flag == "--folds":
            assert after[-1]["folds"] == bound.parse(value) and len(after) == len(before) + 1
    else:
        _refused_in_one_line(rc, err, flag)
        assert after == before


#: Flags whose accepted values would start a server or touch files: parsed only.
PARSED_ONLY = {("serve", "--port"): PORT, ("reward-server", "--port"): PORT, ("score", "--penalty"): PENALTY,
               ("cache", "prune", "--older-than"): Bound(0, 36_500)}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(sorted(PARSED_ONLY)), value=VALUES)
def test_ports_and_other_flags_parse_in_range_or_are_refused_in_one_line(
        capsys: pytest.CaptureFixture[str], where: tuple[str, ...], value: str) -> None:
    *command, flag = where
    try:
        args = build_parser().parse_args([*command, f"{flag}={value}"])
    except SystemExit as exc:
        _refused_in_one_line(exc.code, capsys.readouterr().err, flag)
        return
    got = getattr(args, flag.lstrip("-").replace("-", "_"))
    assert PARSED_ONLY[where].contains(got) and got == PARSED_ONLY[where].parse(value)
