"""Helpers for the engine's integration tests: a tiny encoder under RMSTUDIO_HOME and learnable synthetic labels."""
from __future__ import annotations

import random
from pathlib import Path

from db.session import Database
from db.store import add_label, add_ranking, get_or_create_comparison, get_or_create_prompt, get_or_create_response

GOOD = ["thank you, here is a careful and helpful answer", "happy to help, step by step", "a clear, kind and correct reply",
        "here is a safe and useful explanation", "glad you asked, the answer is"]
BAD = ["no. go away, stupid", "i refuse, figure it out yourself", "whatever, that is dumb", "ugh, not answering that",
       "you are an idiot for asking"]
TOPICS = ["cooking pasta", "fixing a bike", "learning python", "planting tomatoes", "saving money", "writing a poem",
          "training a dog", "painting a wall", "running a marathon", "baking bread", "tying a tie", "reading faster"]


def tiny_backbone(home: Path, name: str = "tiny-enc", **kw) -> Path:
    """A tiny random BERT with the MiniLM tokenizer under ``home`` (cached per test run by directory)."""
    from tests.tiny_models import build_tiny_encoder

    out = home / "backbones" / name
    if not (out / "config.json").exists():
        build_tiny_encoder(out, **kw)
    return out


def seed_labels(db: Database, n_prompts: int = 24, *, seed: int = 0, source: str = "crowd", test_prompts: int = 0,
                ties: int = 0, both_bad: int = 0, rankings: int = 0) -> None:
    """Prompts with one good and one bad response and a label preferring the good one (random stored side);
    optionally test-split labels, tie labels, both_bad labels and 3-way rankings."""
    rng = random.Random(seed)
    with db.write() as s:
        for i in range(n_prompts + test_prompts):
            topic = TOPICS[i % len(TOPICS)]
            p = get_or_create_prompt(s, f"question {i}: how do I go about {topic}?", category=topic.split()[0])
            good = get_or_create_response(s, p, f"{rng.choice(GOOD)} about {topic}.")
            bad = get_or_create_response(s, p, f"{rng.choice(BAD)} ({topic}) #{i}")
            oc = get_or_create_comparison(s, good, bad)
            add_label(s, comparison_id=oc.comparison.id, outcome=oc.outcome_to_stored("a"), source=source,
                      annotator=f"ann{i % 3}", idempotency_key=f"lab-{seed}-{i}",
                      split="test" if i >= n_prompts else "train", strength=1 + i % 2)
        for j in range(ties):
            p = get_or_create_prompt(s, f"tie question {j} on {TOPICS[j % len(TOPICS)]}")
            a = get_or_create_response(s, p, f"{GOOD[j % len(GOOD)]} version one")
            b = get_or_create_response(s, p, f"{GOOD[(j + 1) % len(GOOD)]} version two")
            oc = get_or_create_comparison(s, a, b)
            add_label(s, comparison_id=oc.comparison.id, outcome="tie", source=source, annotator="ann-tie",
                      idempotency_key=f"tie-{seed}-{j}")
        for j in range(both_bad):
            p = get_or_create_prompt(s, f"both bad question {j}")
            a = get_or_create_response(s, p, f"{BAD[j % len(BAD)]} one")
            b = get_or_create_response(s, p, f"{BAD[(j + 1) % len(BAD)]} two")
            oc = get_or_create_comparison(s, a, b)
            add_label(s, comparison_id=oc.comparison.id, outcome="both_bad", source=source, annotator="ann-bb",
                      idempotency_key=f"bb-{seed}-{j}")
        for j in range(rankings):
            topic = TOPICS[j % len(TOPICS)]
            p = get_or_create_prompt(s, f"rank question {j}: tips for {topic}?")
            rs = [get_or_create_response(s, p, t) for t in (f"{GOOD[j % 5]} on {topic}", f"ok, {topic} is fine I guess",
                                                            f"{BAD[j % 5]} {topic}")]
            add_ranking(s, prompt_id=p.id, response_ids=[r.id for r in rs], source="expert", annotator="ranker",
                        idempotency_key=f"rank-{seed}-{j}")


# ---- fixtures (import them into a test module to use them) ----
import pytest  # noqa: E402

from db.config import Settings  # noqa: E402


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny random encoder per test session, in a folder the tests allow through RMSTUDIO_MODEL_DIRS."""
    from tests.tiny_models import build_tiny_encoder

    root = tmp_path_factory.mktemp("engine-backbones")
    return build_tiny_encoder(root / "tiny-enc")


@pytest.fixture
def engine_settings(home: Path, tiny_encoder: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings of the test's RMSTUDIO_HOME with the tiny encoder's folder allowed."""
    monkeypatch.setenv("RMSTUDIO_MODEL_DIRS", str(tiny_encoder.parent))
    return Settings.from_env()


@pytest.fixture(autouse=False)
def one_thread():
    """Tiny models: one torch thread avoids oversubscribing shared cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(tiny_encoder: Path, **kw):
    """A fast TrainConfig on the tiny encoder."""
    from rm_engine.config import TrainConfig

    base = {"backbone": str(tiny_encoder), "max_length": 64, "epochs": 150, "lr": 1e-2, "weight_decay": 1e-3}
    base.update(kw)
    return TrainConfig(**base)
