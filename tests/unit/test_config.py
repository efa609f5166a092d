"""TrainConfig: defaults, validation naming the field, JSON round trip, environment and argparse."""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import pytest

from db.bounds import Bound, Choice, Switch, rule_of
from rm_engine.config import (
    DEFAULT_SOURCE_WEIGHTS,
    MODE_DEFAULTS,
    MODES,
    TrainConfig,
    defaults_text,
    parse_override,
    parse_source_weights,
)


def test_defaults_and_round_trip() -> None:
    c = TrainConfig()
    assert c.mode == "head" and c.backbone == "minilm" and c.max_length == 256 and c.ties == "model"
    assert c.source_weights == {"expert": 1.0, "crowd": 0.8, "ai": 0.5}
    c2 = TrainConfig(sources=("expert", "ai"), source_weights="crowd=0.3", ensemble=4, lora=True)
    d = json.loads(json.dumps(c2.to_dict()))  # JSON-safe
    assert TrainConfig.from_dict(d) == c2 and d["sources"] == ["expert", "ai"]
    assert d["source_weights"] == {**DEFAULT_SOURCE_WEIGHTS, "crowd": 0.3}


def test_resolved_fills_mode_defaults() -> None:
    head = TrainConfig().resolved()
    assert head.epochs and head.lr and head.weight_decay == 0.1
    assert TrainConfig(head="mlp").resolved().weight_decay == 0.01
    ft = TrainConfig(mode="finetune").resolved()
    assert ft.lr == 2e-5 and ft.epochs == 2
    # LoRA's own default: at the full fine-tune's rate its adapters barely move (BENCHMARKS.md, "LoRA")
    assert TrainConfig(mode="finetune", lora=True).resolved().lr == 2e-4
    assert TrainConfig(mode="finetune", lora=True, lr=1e-5).resolved().lr == 1e-5
    assert TrainConfig(lr=0.5).resolved().lr == 0.5


@pytest.mark.parametrize("kw,field", [
    ({"mode": "magic"}, "mode"), ({"ensemble": 0}, "ensemble"), ({"val_fraction": 0.95}, "val_fraction"),
    ({"ties": "maybe"}, "ties"), ({"sources": ("robots",)}, "sources"), ({"lr": -1.0}, "lr"),
])
def test_invalid_values_name_the_field(kw: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        TrainConfig(**kw)


def test_source_weight_parsing_errors() -> None:
    assert parse_source_weights("expert=2, ai=0") == {"expert": 2.0, "crowd": 0.8, "ai": 0.0}
    for bad, needle in [("expert", "SOURCE=WEIGHT"), ("robots=1", "unknown source"), ("ai=x", "from 0 to 100"), ("ai=-1", "from 0 to 100")]:
        with pytest.raises(ValueError, match=needle):
            parse_source_weights(bad)
    with pytest.raises(ValueError, match="unknown field"):
        TrainConfig.from_dict({"epochz": 3})
    assert TrainConfig.from_dict({"epochz": 3}, strict=False) == TrainConfig()


def test_from_env_and_args() -> None:
    env = {"RMSTUDIO_TRAIN_MODE": "finetune", "RMSTUDIO_TRAIN_EPOCHS": "3", "RMSTUDIO_TRAIN_LORA": "yes",
           "RMSTUDIO_TRAIN_SOURCES": "expert,crowd", "RMSTUDIO_TRAIN_SOURCE_WEIGHTS": "ai=0.1"}
    c = TrainConfig.from_env(env)
    assert c.mode == "finetune" and c.epochs == 3 and c.lora and c.sources == ("expert", "crowd")
    assert c.source_weights["ai"] == 0.1
    with pytest.raises(ValueError, match="RMSTUDIO_TRAIN_EPOCHS"):
        TrainConfig.from_env({"RMSTUDIO_TRAIN_EPOCHS": "many"})
    args = argparse.Namespace(mode=None, epochs=5, sources="ai", batch_tokens=4096, source_weights="expert=2", inline=True)
    a = TrainConfig.from_args(args, base=TrainConfig(seed=7))
    assert a.epochs == 5 and a.sources == ("ai",) and a.batch_tokens == 4096 and a.seed == 7 and a.source_weights["expert"] == 2.0


def test_gpus_field() -> None:
    assert TrainConfig().gpus == 1
    c = TrainConfig(mode="finetune", gpus=4, max_batch_pairs=8)
    d = json.loads(json.dumps(c.to_dict()))
    assert d["gpus"] == 4 and TrainConfig.from_dict(d) == c
    assert TrainConfig.from_dict({k: v for k, v in d.items() if k != "gpus"}).gpus == 1  # versions stored before the field
    with pytest.raises(ValueError, match="TrainConfig.gpus: must be a whole number from 1 to 64"):
        TrainConfig(mode="finetune", gpus=0)
    with pytest.raises(ValueError, match="TrainConfig.gpus: .*mode='finetune'"):
        TrainConfig(gpus=2)  # head mode
    assert TrainConfig(gpus=1).gpus == 1  # head mode with one process is fine
    e = TrainConfig.from_env({"RMSTUDIO_TRAIN_MODE": "finetune", "RMSTUDIO_TRAIN_GPUS": "2"})
    assert e.gpus == 2
    with pytest.raises(ValueError, match="RMSTUDIO_TRAIN_GPUS"):
        TrainConfig.from_env({"RMSTUDIO_TRAIN_GPUS": "two"})
    with pytest.raises(ValueError, match="TrainConfig.gpus"):
        TrainConfig.from_env({"RMSTUDIO_TRAIN_GPUS": "2"})  # head mode
    a = TrainConfig.from_args(argparse.Namespace(mode="finetune", gpus=3, max_batch_pairs=4))
    assert a.gpus == 3 and a.max_batch_pairs == 4


@pytest.mark.parametrize("url,value,copies", [
    ("sqlite:///x.db", None, False),  # one machine: files on disk are enough
    ("postgresql+psycopg://u@h/db", None, True),  # several machines may share it
    ("postgresql+psycopg://u@h/db", "off", False),
    ("sqlite:///x.db", "ON", True),
])
def test_model_copies_in_the_database(url: str, value: str | None, copies: bool) -> None:
    from db.config import Settings

    env = {"RMSTUDIO_DB": url, **({"RMSTUDIO_MODELS_IN_DB": value} if value else {})}
    assert Settings.from_env(env).copies_models_to_db is copies


def test_model_copies_setting_is_checked() -> None:
    from db.config import Settings

    with pytest.raises(ValueError, match="RMSTUDIO_MODELS_IN_DB must be one of auto, on, off, got 'maybe'"):
        Settings.from_env({"RMSTUDIO_MODELS_IN_DB": "maybe"})


@pytest.mark.parametrize("text,expected", [("head=mlp", ("head", "mlp")), ("weight-decay=1", ("weight_decay", 1.0)),
                                           ("--epochs=3", ("epochs", 3)), ("lora=yes", ("lora", True)),
                                           ("sources=expert,crowd", ("sources", ["expert", "crowd"]))])
def test_parse_override(text: str, expected: tuple) -> None:
    assert parse_override(text) == expected


@pytest.mark.parametrize("text,message", [("nonsense=1", "FIELD one of"), ("head", "expected FIELD=VALUE"),
                                          ("epochs=three", r"epochs: must be a whole number from 1 to 1000000 \(got 'three'\)")])
def test_parse_override_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_override(text)


# ---- one description per field: the CLI, FIELD=VALUE, the environment (the form: tests/app/test_train_form_fields.py)

FIELDS = dataclasses.fields(TrainConfig)


def _sample(f: dataclasses.Field) -> tuple[str, Any]:
    """A text other than the field's default, as a flag, a variable or FIELD=VALUE gives it, and the value it must
    become (derived from the field's metadata)."""
    rule, default = rule_of(f), getattr(TrainConfig(), f.name)
    if isinstance(rule, Choice):
        value = next(v for v in reversed(rule.values) if v != default)
        return value, value
    if isinstance(rule, Switch):
        return ("off", False) if default else ("yes", True)
    if isinstance(rule, Bound):
        for x in (rule.hi, rule.lo, ((rule.lo or 0) + (rule.hi or 1)) / 2):
            x = int(x) if rule.integer else x
            if x is not None and rule.contains(x) and x != default:
                return str(x), x
        raise AssertionError(f"no sample value for {f.name}")
    if "subset_of" in f.metadata:
        items = tuple(f.metadata["subset_of"])[::2]
        return ",".join(items), items
    if "weights_of" in f.metadata:
        item = f.metadata["weights_of"][-1]
        return f"{item}=0.25", {**default, item: 0.25}
    return "models/tiny", "models/tiny"


BASE = TrainConfig(mode="finetune")  # every option applies (gpus > 1 needs fine-tune mode)


@pytest.mark.parametrize("f", FIELDS, ids=[f.name for f in FIELDS])
def test_every_field_is_documented_once_with_its_mode(f: dataclasses.Field) -> None:
    assert len(f.metadata.get("help", "")) > 8 and f.metadata.get("mode") in (None, *MODES)
    assert f.name in TrainConfig.__doc__ and f.metadata["help"] in TrainConfig.__doc__  # the docstring shows it
    if f.name in MODE_DEFAULTS:  # left at None, the mode decides; the help says what it decides
        assert f.default is None and defaults_text(f.name) in f.metadata["help"]


@pytest.mark.parametrize("f", FIELDS, ids=[f.name for f in FIELDS])
def test_every_field_is_a_cli_flag_with_its_help(f: dataclasses.Field) -> None:
    from cli import model_cmds

    parser = argparse.ArgumentParser()
    model_cmds.register(parser.add_subparsers())
    train = parser._subparsers._group_actions[0].choices["train"]
    [action] = [a for a in train._actions if a.dest == f.name]
    assert f.metadata["help"] in action.help.replace("%%", "%")
    text, value = _sample(f)
    flag = action.option_strings[0]
    argv = [flag if value is True else f"--no-{flag[2:]}"] if isinstance(rule_of(f), Switch) else [flag, text]
    cfg = TrainConfig.from_args(parser.parse_args(["train", *argv]), base=BASE)
    assert getattr(cfg, f.name) == value and cfg.replace(**{f.name: getattr(BASE, f.name)}) == BASE


@pytest.mark.parametrize("f", FIELDS, ids=[f.name for f in FIELDS])
def test_every_field_takes_field_value_and_its_environment_variable(f: dataclasses.Field) -> None:
    text, value = _sample(f)
    name, parsed = parse_override(f"{f.name.replace('_', '-')}={text}")
    assert name == f.name and getattr(BASE.replace(**{name: parsed}), f.name) == value
    env = {"RMSTUDIO_TRAIN_MODE": "finetune", f"RMSTUDIO_TRAIN_{f.name.upper()}": text}
    assert getattr(TrainConfig.from_env(env), f.name) == value


@pytest.mark.parametrize("f", [f for f in FIELDS if rule_of(f) is not None], ids=lambda f: f.name)
def test_a_bad_text_is_refused_naming_its_origin(f: dataclasses.Field) -> None:
    with pytest.raises(ValueError, match=f"RMSTUDIO_TRAIN_{f.name.upper()}: must be "):
        TrainConfig.from_env({f"RMSTUDIO_TRAIN_{f.name.upper()}": "nonsense"})
    with pytest.raises(ValueError, match=f"^{f.name}: must be "):
        parse_override(f"{f.name}=nonsense")


#: A model version's config as stored before the fields were grouped by mode (flat, in the old field order, with
#: the ``truncation`` key versions add).
SAVED_BEFORE = {
    "mode": "finetune", "backbone": "/models/qwen", "epochs": 3, "lr": None, "batch_size": 16, "batch_tokens": 8192,
    "max_batch_pairs": 8, "max_length": 512, "ensemble": 2, "source_weights": {"expert": 1.0, "crowd": 0.6, "ai": 0.5},
    "sources": ["expert", "crowd"], "ties": "model", "tie_model": "rao_kupper", "margin_from_strength": 0.5,
    "center_coef": 0.01, "val_fraction": 0.1, "seed": 7, "head": "linear", "weight_decay": None, "lora": True,
    "lora_r": 8, "lora_alpha": 16, "device": "cuda", "gpus": 2, "grad_checkpointing": False, "compile": True,
    "packing": True, "packed_attention": "varlen", "pooling": "auto", "head_init": "auto", "features": "rich",
    "quantize": False, "patience": 30, "length_covariate": True, "annotator_weights": False,
    "truncation": "keep the response, cut the prompt from the left",
}


def test_configs_saved_before_load_as_they_were() -> None:
    cfg = TrainConfig.from_dict(SAVED_BEFORE)
    for name, value in SAVED_BEFORE.items():
        if name != "truncation":
            assert cfg.to_dict()[name] == value, name
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # and saved again, JSON-safe
    # a job queued by an older release: only the fields it knew, the others at their defaults
    old_job = {"mode": "head", "epochs": 40, "ensemble": 3, "source_weights": {"expert": 1.0, "crowd": 0.8, "ai": 0.5}}
    assert TrainConfig.from_dict(old_job) == TrainConfig(epochs=40, ensemble=3)
    assert TrainConfig.from_dict(old_job).resolved().weight_decay == 0.1  # head mode's documented default
