"""Loading versions, identical scores after a round trip, damaged files and fallback, the RL reward function,
rescoring stored responses, and one test on the real MiniLM."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from db.session import Database
from db.versions import count_responses, get_scores, responses_for_scoring
from rm_engine.config import Cancelled
from rm_engine.serving.scoring import RewardModel, load_usable, rescore_stored, reward_function
from rm_engine.training import train_and_publish
from rm_engine.versions.registry import ModelFilesError, commit_dir, stage_dir
from tests.integration.rm_seed import engine_settings, one_thread, seed_labels, tiny_config, tiny_encoder  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def two_versions(sqlite_db: Database, engine_settings, tiny_encoder: Path):
    seed_labels(sqlite_db, 20)
    v1 = train_and_publish(sqlite_db, engine_settings, tiny_config(tiny_encoder, epochs=30))
    v2 = train_and_publish(sqlite_db, engine_settings, tiny_config(tiny_encoder, epochs=30, ensemble=3, seed=1))
    return v1, v2


def _reloaded_scores_match_cache(db: Database, model: RewardModel, version_id: int) -> list:
    """Scores of every stored response from the loaded model equal those cached at training time."""
    with db.read() as s:
        cached = get_scores(s, version_id)
        rows = responses_for_scoring(s)
    got = model.score_rows([(p, h, t) for _, p, h, t in rows])
    np.testing.assert_allclose([g.raw for g in got], [cached[r[0]][0] for r in rows], atol=1e-4)
    return got


def test_round_trip_scores_are_identical(sqlite_db: Database, engine_settings, two_versions) -> None:
    _, v2 = two_versions
    model = RewardModel.load(sqlite_db, engine_settings, "latest")
    assert model.version_id == v2.id and model.members == 3
    with sqlite_db.read() as s:
        cached = get_scores(s, v2.id)
        rows = responses_for_scoring(s)
    scores = model.score_rows([(p, h, t) for _, p, h, t in rows])
    got = {rid: (sc.raw, sc.std) for (rid, _, _, _), sc in zip(rows, scores)}
    for rid, (raw, std) in cached.items():  # computed at training time, before saving
        assert got[rid][0] == pytest.approx(raw, abs=1e-5)
        assert got[rid][1] == pytest.approx(std, abs=1e-5)
    assert any(s.std > 0 for s in scores)  # ensemble disagreement is reported
    # normalized forms follow the stored statistics
    ns = v2.norm_stats
    sc = scores[0]
    assert sc.z == pytest.approx((sc.raw - ns["mean"]) / ns["std"], abs=1e-9)
    assert 0.0 <= sc.percentile <= 100.0 and 0.0 < sc.sigmoid < 1.0


def test_score_one_prompt_many_responses(sqlite_db: Database, engine_settings, two_versions) -> None:
    v1, _ = two_versions
    model = RewardModel.load(sqlite_db, engine_settings, v1.id)
    out = model.score("question 1: how do I go about fixing a bike?",
                      ["happy to help, step by step about fixing a bike.", "no. go away, stupid (fixing a bike) #1"],
                      history=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    assert len(out) == 2 and out[0].raw != out[1].raw and out[0].std == 0.0


def test_damaged_and_missing_files_fall_back(sqlite_db: Database, engine_settings, two_versions) -> None:
    v1, v2 = two_versions
    weights = Path(engine_settings.home) / v2.path / "head.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40] + b"x" * 40)  # corrupt the tail
    with pytest.raises(ModelFilesError, match=f"model version {v2.id}.*damaged"):
        RewardModel.load(sqlite_db, engine_settings, v2.id)
    model = load_usable(sqlite_db, engine_settings, "latest")
    assert model.version_id == v1.id
    assert f"model version {v2.id}" in model.fallback_message and f"using model version {v1.id}" in model.fallback_message
    # files of the older one deleted too: nothing usable is left, the error names the requested version
    import shutil

    shutil.rmtree(Path(engine_settings.home) / v1.path)
    with pytest.raises(ModelFilesError, match=f"model version {v1.id}: its files are missing"):
        RewardModel.load(sqlite_db, engine_settings, v1.id)
    with pytest.raises(ModelFilesError, match=f"model version {v2.id}"):
        load_usable(sqlite_db, engine_settings, "latest")


def test_invalid_safetensors_named_even_with_matching_manifest(sqlite_db: Database, engine_settings, two_versions) -> None:
    v1, _ = two_versions
    d = Path(engine_settings.home) / v1.path
    (d / "head.safetensors").write_bytes(b"not safetensors at all")
    import hashlib
    import json

    man = json.loads((d / "manifest.json").read_text())
    man["files"]["head.safetensors"] = {"size": 22, "sha256": hashlib.sha256(b"not safetensors at all").hexdigest()}
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ModelFilesError, match=f"model version {v1.id}: head.safetensors is not a valid safetensors"):
        RewardModel.load(sqlite_db, engine_settings, v1.id)


def test_pickles_are_never_published(engine_settings) -> None:
    tmp = stage_dir(engine_settings)
    (tmp / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ModelFilesError, match="pickle"):
        commit_dir(engine_settings, tmp)


def test_reward_function_for_grpo(sqlite_db: Database, engine_settings, two_versions) -> None:
    model = RewardModel.load(sqlite_db, engine_settings, "latest")
    f = reward_function(model)
    prompts = ["how do I bake bread?", [{"role": "system", "content": "be nice"}, {"role": "user", "content": "how do I bake bread?"}]]
    completions = ["happy to help, step by step", [{"role": "assistant", "content": "happy to help, step by step"}]]
    out = f(prompts=prompts, completions=completions, completion_ids=None)
    assert isinstance(out, list) and len(out) == 2 and all(isinstance(x, float) for x in out)
    plain = model.score_rows([("how do I bake bread?", None, "happy to help, step by step")])[0].raw
    assert out[0] == pytest.approx(plain)
    assert f.__name__.startswith(f"rmstudio_v{model.version_id}")
    z = reward_function(model, kind="z")(["p"], ["happy to help"])
    assert z[0] == pytest.approx(model.score_rows([("p", None, "happy to help")])[0].z)


def test_rescore_stored(sqlite_db: Database, engine_settings, two_versions) -> None:
    v1, _ = two_versions
    seed_labels(sqlite_db, 26, seed=3)  # responses the model never saw in training
    events: list[dict] = []
    n = rescore_stored(sqlite_db, engine_settings, v1.id, progress=events.append, chunk=16)
    with sqlite_db.read() as s:
        total = count_responses(s)
        cached = get_scores(s, v1.id)
    assert n == total == len(cached) and events[-1]["step"] == total
    with pytest.raises(Cancelled):
        rescore_stored(sqlite_db, engine_settings, v1.id, should_stop=lambda: True)


def test_real_minilm_head(sqlite_db: Database, home: Path) -> None:
    """The bundled MiniLM on a handful of texts: trains, saves, loads, scores identically."""
    from db.config import Settings

    settings = Settings.from_env()
    seed_labels(sqlite_db, 8)
    v = train_and_publish(sqlite_db, settings, tiny_config(Path("minilm"), backbone="minilm", max_length=48, epochs=40))
    assert v.backbone == "minilm" and v.metrics["train"]["accuracy"] >= 0.8
    _reloaded_scores_match_cache(sqlite_db, RewardModel.load(sqlite_db, settings, v.id), v.id)


def test_finetune_version_round_trip(sqlite_db: Database, engine_settings, tiny_encoder: Path) -> None:
    """Finetune mode through the same publish/load path: identical scores after loading, fallback-ready files."""
    seed_labels(sqlite_db, 12)
    cfg = tiny_config(tiny_encoder, mode="finetune", epochs=1, lr=1e-3, weight_decay=0.0, device="cpu", batch_tokens=2048)
    v = train_and_publish(sqlite_db, engine_settings, cfg)
    assert v.mode == "finetune" and (Path(engine_settings.home) / v.path / "member-0").is_dir()
    got = _reloaded_scores_match_cache(sqlite_db, RewardModel.load(sqlite_db, engine_settings, v.id), v.id)
    assert len({round(g.raw, 6) for g in got}) > 1  # not one constant score


def test_finetune_ensemble_centres_its_members(sqlite_db: Database, engine_settings, tiny_encoder: Path) -> None:
    """A fine-tuned ensemble stores its members' centres; loading it reproduces the cached (centred) scores."""
    import json

    seed_labels(sqlite_db, 12)
    cfg = tiny_config(tiny_encoder, mode="finetune", ensemble=2, epochs=1, lr=1e-3, batch_tokens=1024)
    v = train_and_publish(sqlite_db, engine_settings, cfg)
    assert v is not None and v.ensemble_size == 2
    fcfg = json.loads((Path(engine_settings.home) / v.path / "config.json").read_text())
    assert fcfg["members"] == 2 and len(fcfg["member_centers"]) == 2
    model = RewardModel.load(sqlite_db, engine_settings, v.id)
    got = _reloaded_scores_match_cache(sqlite_db, model, v.id)
    assert np.mean([g.raw for g in got]) == pytest.approx(0.0, abs=1e-4)  # centred members average to 0
    with sqlite_db.read() as s:
        S = model.score_matrix([(p, h, t) for _, p, h, t in responses_for_scoring(s)])
    np.testing.assert_allclose(S.mean(axis=0), fcfg["member_centers"], atol=1e-4)
