"""TrainConfig: defaults, validation naming the field, JSON round trip, environment and argparse."""
from __future__ import annotations

import argparse
import json

import pytest

from rm_engine.config import DEFAULT_SOURCE_WEIGHTS, TrainConfig, parse_override, parse_source_weights


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
