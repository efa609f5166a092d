"""Finetune pooling: sentence-transformers encoders trained with mean pooling (the bundled MiniLM) are scored from
the mean of their last hidden states; other encoders from [CLS]; decoders from the last real token. The choice is
recorded with the model and survives save/load (full and LoRA)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from db.config import Settings
from db.pairs import TrainingPair
from rm_engine.config import TrainConfig
from rm_engine.finetune.model import FinetunedModel, _from_pretrained, _no_dropout_config
from rm_engine.finetune.reward_net import RewardNet, backbone_pooling, collate
from rm_engine.finetune.train import train_finetune
from tests.tiny_models import build_tiny_decoder, build_tiny_encoder, minilm_dir

torch.set_num_threads(1)


def _sentence_transformers_files(folder: Path, *, mean: bool) -> Path:
    """The two files sentence-transformers writes to declare its pooling."""
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": not mean, "pooling_mode_mean_tokens": mean}))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pooling_models")
    build_tiny_encoder(root / "plain")
    _sentence_transformers_files(build_tiny_encoder(root / "st-mean"), mean=True)
    _sentence_transformers_files(build_tiny_encoder(root / "st-cls"), mean=False)
    build_tiny_decoder(root / "dec")
    return root


def _load(path: Path) -> torch.nn.Module:
    return _from_pretrained(path, _no_dropout_config(path))[0].eval()


@pytest.mark.parametrize(("name", "decoder", "expected"), [
    ("plain", False, "cls"), ("st-mean", False, "mean"), ("st-cls", False, "cls"), ("dec", True, "last")])
def test_pooling_follows_what_the_backbone_was_trained_with(models: Path, name: str, decoder: bool, expected: str) -> None:
    assert backbone_pooling(models / name, _load(models / name), decoder) == expected


def test_the_bundled_minilm_is_a_mean_pooling_backbone() -> None:
    assert backbone_pooling(minilm_dir(), _load(minilm_dir()), False) == "mean"


def test_mean_pooling_is_the_masked_mean_through_the_linear_head(models: Path) -> None:
    model = _load(models / "st-mean")
    net = RewardNet(model, decoder=False, pooling="mean").eval()
    short, long_ = [101, 2023, 2003, 102], [101, 2023, 2003, 1037, 3231, 102]
    ids, mask = collate([short, long_], 0, torch.device("cpu"))
    with torch.no_grad():
        got = net(ids, mask)
        hidden = model.bert(input_ids=torch.tensor([short])).last_hidden_state  # no padding at all
        want = model.classifier(hidden.mean(1))[0, 0]
        alone = net(*collate([short], 0, torch.device("cpu")))
    torch.testing.assert_close(got[0], want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got[0], alone[0], atol=1e-5, rtol=0)  # padding does not move the score
    assert all(not p.requires_grad for p in model.bert.pooler.parameters())  # unused, frozen (DDP needs it)


def test_pooling_must_fit_the_model(models: Path) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        RewardNet(_load(models / "st-mean"), decoder=False, pooling="last")


def _pairs(n: int) -> list[TrainingPair]:
    rng = random.Random(0)
    words = "apple river stone cloud music table green orange".split()
    out = []
    for i in range(n):
        base = " ".join(rng.choice(words) for _ in range(rng.randint(2, 12)))
        out.append(TrainingPair(prompt_id=i, prompt=f"question {i}", history=(), category=None, chosen_id=2 * i,
                                rejected_id=2 * i + 1, chosen=base + " excellent helpful", rejected=base + " terrible rude",
                                source="crowd", annotator="a"))
    return out


@pytest.mark.parametrize("lora", [False, True])
def test_mean_pooled_model_learns_and_round_trips(models: Path, tmp_path: Path, lora: bool) -> None:
    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'x.db'}", model_dirs=(models,))
    pairs = _pairs(90)
    cfg = TrainConfig(mode="finetune", backbone=str(models / "st-mean"), epochs=2, lr=5e-3 if lora else 1e-3,
                      batch_tokens=2048, max_length=64, seed=0, lora=lora, lora_r=4, lora_alpha=8)
    res = train_finetune(cfg, pairs[:70], pairs[70:], device="cpu", settings=settings)
    assert res.model.meta.pooling == "mean" and res.history[-1]["val_accuracy"] >= 0.8
    val = pairs[70:]
    before = res.model.score([p.prompt for p in val], None, [p.chosen for p in val])
    back = FinetunedModel.load(res.model.save(tmp_path / "saved"), device="cpu")
    assert back.meta.pooling == "mean" and back.net.pooling == "mean"
    np.testing.assert_allclose(back.score([p.prompt for p in val], None, [p.chosen for p in val]), before, atol=1e-6, rtol=0)


def test_models_saved_before_pooling_was_recorded_load_with_cls(models: Path, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'x.db'}", model_dirs=(models,))
    cfg = TrainConfig(mode="finetune", backbone=str(models / "plain"), epochs=1, lr=1e-3, batch_tokens=2048,
                      max_length=64, seed=0)
    out = train_finetune(cfg, _pairs(20), [], device="cpu", settings=settings).model.save(tmp_path / "old")
    meta = json.loads((out / "finetune.json").read_text())
    assert meta.pop("pooling") == "cls"
    (out / "finetune.json").write_text(json.dumps(meta))
    assert FinetunedModel.load(out, device="cpu").net.pooling == "cls"


def test_config_can_force_cls_pooling_and_rejects_unknown_ones(models: Path, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'x.db'}", model_dirs=(models,))
    cfg = TrainConfig(mode="finetune", backbone=str(models / "st-mean"), epochs=1, lr=1e-3, batch_tokens=2048,
                      max_length=64, seed=0, pooling="cls")
    assert train_finetune(cfg, _pairs(20), [], device="cpu", settings=settings).model.meta.pooling == "cls"
    assert TrainConfig.from_env({"RMSTUDIO_TRAIN_POOLING": "mean"}).pooling == "mean"
    with pytest.raises(ValueError, match="TrainConfig.pooling"):
        TrainConfig(pooling="max")


@pytest.mark.parametrize(("name", "pooling", "lora"), [
    ("st-mean", "mean", False), ("plain", "cls", False), ("dec", "last", False), ("st-mean", "mean", True)])
def test_probe_sets_the_head_the_model_reads(models: Path, name: str, pooling: str, lora: bool) -> None:
    """head_init='probe': the fitted probe becomes the head the model scores with (LoRA: peft's trainable copy)."""
    from transformers import AutoTokenizer

    from rm_engine.finetune.linear_probe import init_head_by_probe
    from rm_engine.finetune.model import load_backbone_model
    from rm_engine.finetune.reward_net import by_length

    decoder = name == "dec"
    tok = AutoTokenizer.from_pretrained(str(models / name))
    cfg = TrainConfig(mode="finetune", lora=lora, lora_r=4, lora_alpha=8)
    net = RewardNet(load_backbone_model(models / name, tok, cfg, decoder=decoder), decoder, pooling)
    pairs = _pairs(40)
    enc = lambda t: tok(t)["input_ids"]  # noqa: E731
    chosen, rejected = [enc(p.chosen) for p in pairs], [enc(p.rejected) for p in pairs]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    info = init_head_by_probe(net, chosen, rejected, [1.0] * 40, [False] * 40, pad, torch.device("cpu"))
    assert info["pairs"] == 40 and info["train_accuracy"] >= 0.9  # "excellent helpful" vs "terrible rude"
    cpu = torch.device("cpu")
    feats = by_length(net, net.pooled, chosen + rejected, pad, cpu)
    with torch.no_grad():
        scores = torch.cat([net(*collate([s], pad, cpu)) for s in chosen + rejected])
        head = net.head
        direct = head(feats)[:, 0]
    # one row alone vs rows padded together in batches: float noise only (a wrong head would differ by O(1))
    torch.testing.assert_close(scores, direct, atol=1e-3, rtol=1e-3)
    assert float((scores[:40] > scores[40:]).float().mean()) == pytest.approx(info["train_accuracy"])
    if getattr(head, "bias", None) is not None:  # decoders' score heads have no bias: nothing to centre with
        assert abs(float(scores.mean())) < 1e-3  # the bias centres the training rows


def test_finetune_from_a_probe_records_it_and_learns(models: Path, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'x.db'}", model_dirs=(models,))
    pairs = _pairs(90)
    cfg = TrainConfig(mode="finetune", backbone=str(models / "st-mean"), epochs=1, lr=1e-3, batch_tokens=2048,
                      max_length=64, seed=0, head_init="probe")
    res = train_finetune(cfg, pairs[:70], pairs[70:], device="cpu", settings=settings)
    assert res.history[0]["head_probe"]["pairs"] == 70 and res.history[0]["head_probe"]["train_accuracy"] >= 0.9
    assert res.history[-1]["val_accuracy"] >= 0.8


def test_rich_pooling_is_head_modes_features_of_three_sequences(models: Path) -> None:
    """[e_pr, e_r, e_p * e_r, e_p * e_pr] of L2-normalised masked means, each sequence embedded on its own; padding
    and batch company do not move a score; a context shared by two rows is encoded once."""
    model = _load(models / "plain")
    net = RewardNet(model, decoder=False, pooling="rich").eval()
    cpu = torch.device("cpu")
    ctx, r1, r2 = [101, 2023, 2003, 102], [101, 1037, 102], [101, 1037, 3231, 2023, 102]
    rows = [(ctx + r1[1:], r1, ctx), (ctx + r2[1:], r2, ctx), ([101, 7, 102, 8, 102], [101, 8, 102], [101, 7, 102])]
    args, real = net.collate(rows, 0, cpu)
    assert args[4].shape[0] == 2 and args[6].tolist() == [0, 0, 1]  # two distinct contexts, the first one shared
    assert real == sum(len(r[0]) + len(r[1]) for r in rows) + len(ctx) + 3

    def emb(ids: list[int]) -> torch.Tensor:  # one sequence alone: no padding at all
        h = model.bert(input_ids=torch.tensor([ids])).last_hidden_state.mean(1)[0]
        return torch.nn.functional.normalize(h, dim=-1)

    with torch.no_grad():
        got = net(*args)
        for k, (joint, resp, context) in enumerate(rows):
            e_pr, e_r, e_p = emb(joint), emb(resp), emb(context)
            want = net.rich_head(torch.cat([e_pr, e_r, e_p * e_r, e_p * e_pr]))[0]
            torch.testing.assert_close(got[k], want, atol=1e-5, rtol=0)
            torch.testing.assert_close(net(*net.collate([rows[k]], 0, cpu)[0])[0], want, atol=1e-5, rtol=0)
    assert net.head is net.rich_head and net.rich_head.in_features == 4 * model.config.hidden_size
    unused = list(model.bert.pooler.parameters()) + list(model.classifier.parameters())
    assert all(not p.requires_grad for p in unused)  # DDP would wait for their gradients forever


def test_rich_pooling_is_for_encoders(models: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError, match="does not fit a decoder"):
        RewardNet(_load(models / "dec"), decoder=True, pooling="rich")
    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'x.db'}", model_dirs=(models,))
    cfg = TrainConfig(mode="finetune", backbone=str(models / "dec"), epochs=1, lr=1e-3, batch_tokens=2048,
                      max_length=64, seed=0, pooling="rich")
    with caplog.at_level("WARNING", logger="rm_engine.finetune.train"):
        res = train_finetune(cfg, _pairs(20), [], device="cpu", settings=settings)
    assert res.model.meta.pooling == "last" and "pooling='rich' ignored" in caplog.text


@pytest.mark.parametrize("lora", [False, True])
def test_rich_model_starts_from_the_probe_learns_and_round_trips(models: Path, tmp_path: Path, lora: bool) -> None:
    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'x.db'}", model_dirs=(models,))
    pairs = _pairs(90)
    cfg = TrainConfig(mode="finetune", backbone=str(models / "plain"), epochs=1, lr=5e-3 if lora else 1e-3,
                      batch_tokens=2048, max_length=64, seed=0, pooling="rich", lora=lora, lora_r=4, lora_alpha=8)
    assert cfg.head_init == "auto" and cfg.resolved().head_init == "probe"
    res = train_finetune(cfg, pairs[:70], pairs[70:], device="cpu", settings=settings)
    probe = res.history[0]["head_probe"]
    assert probe["pairs"] == 70 and probe["l2"] == 1.0 and probe["train_accuracy"] >= 0.9
    assert res.model.meta.pooling == "rich" and res.history[-1]["val_accuracy"] >= 0.8
    val = pairs[70:]
    prompts, chosen = [p.prompt for p in val], [p.chosen for p in val]
    before = res.model.score(prompts, None, chosen)
    saved = res.model.save(tmp_path / "saved")
    back = FinetunedModel.load(saved, device="cpu")
    assert back.net.pooling == "rich"
    np.testing.assert_allclose(back.score(prompts, None, chosen), before, atol=1e-6, rtol=0)
    (saved / "rich_head.safetensors").unlink()
    with pytest.raises(ValueError, match="rich_head.safetensors: cannot load the rich score head"):
        FinetunedModel.load(saved, device="cpu")


def test_rich_rows_share_a_prompts_context(models: Path, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'x.db'}", model_dirs=(models,))
    cfg = TrainConfig(mode="finetune", backbone=str(models / "plain"), epochs=1, lr=1e-3, batch_tokens=2048,
                      max_length=32, seed=0, pooling="rich")
    fm = train_finetune(cfg, _pairs(10), [], device="cpu", settings=settings).model
    rows = fm.encode(["same prompt", "same prompt", "other"], None, ["a b", "c " * 60, "d"])
    assert rows[0][2] is rows[1][2] and rows[0][2] != rows[2][2]
    assert all(len(r[0]) <= 32 and len(r[1]) <= 32 for r in rows) and rows[1][1][-1] == fm.tokenizer.sep_token_id
    scores = fm.score(["same prompt"] * 3, None, ["a b", "c " * 60, "d"])
    alone = [fm.score(["same prompt"], None, [r])[0] for r in ["a b", "c " * 60, "d"]]
    np.testing.assert_allclose(scores, alone, atol=1e-5, rtol=0)
