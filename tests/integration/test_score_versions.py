"""Several versions scored as one reward (library and ``rmstudio score --model A --model B``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli import main
from db.session import Database
from db.versions import VersionNotFound
from rm_engine.serving.ensemble import VersionEnsemble
from rm_engine.serving.scoring import RewardModel
from rm_engine.training import train_and_publish
from tests.integration.rm_seed import engine_settings, one_thread, seed_labels, tiny_config, tiny_encoder  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
RESPONSES = ["happy to help, step by step", "ugh, not answering that", "a clear, kind and correct reply"]


@pytest.fixture
def versions(sqlite_db: Database, engine_settings, tiny_encoder: Path) -> list[int]:
    seed_labels(sqlite_db, 16)
    v1 = train_and_publish(sqlite_db, engine_settings, tiny_config(tiny_encoder, epochs=30))
    v2 = train_and_publish(sqlite_db, engine_settings, tiny_config(tiny_encoder, epochs=30, ensemble=2, seed=3, lr=3e-2))
    return [v1.id, v2.id]


def test_versions_combine_through_their_z_scores(sqlite_db: Database, engine_settings, versions: list[int]) -> None:
    singles = [RewardModel.load(sqlite_db, engine_settings, v).score("how do I bake bread?", RESPONSES) for v in versions]
    Z = np.array([[s.z for s in sc] for sc in singles]).T  # (responses, versions)
    for how, expect in (("mean", Z.mean(1)), ("min", Z.min(1)), ("uwo", Z.mean(1) - 0.5 * Z.std(1))):
        ens = VersionEnsemble.load(sqlite_db, engine_settings, versions, how=how, penalty=0.5)
        got = ens.score("how do I bake bread?", RESPONSES)
        np.testing.assert_allclose([g.reward for g in got], expect, atol=1e-9)
        np.testing.assert_allclose([g.std for g in got], Z.std(1), atol=1e-9)
        assert [list(g.z) for g in got] == [versions] * 3
    f = VersionEnsemble.load(sqlite_db, engine_settings, versions).reward_function()
    out = f(prompts=["how do I bake bread?"] * 2, completions=RESPONSES[:2])
    np.testing.assert_allclose(out, Z.mean(1)[:2], atol=1e-9)
    assert f.__name__ == f"rmstudio_v{versions[0]}_v{versions[1]}_mean"


def test_repeated_or_missing_versions_are_refused(sqlite_db: Database, engine_settings, versions: list[int]) -> None:
    with pytest.raises(ValueError, match="each version may appear once"):
        VersionEnsemble.load(sqlite_db, engine_settings, [versions[1], "latest"])
    with pytest.raises(VersionNotFound):
        VersionEnsemble.load(sqlite_db, engine_settings, [versions[0], 999])


def test_cli_scores_with_several_versions(sqlite_db: Database, engine_settings, versions: list[int], capsys) -> None:
    argv = ["score", "--model", str(versions[0]), "--model", f"v{versions[1]}", "--prompt", "how do I bake bread?",
            "--response", RESPONSES[0], "--response", RESPONSES[1]]
    assert main(argv + ["--combine", "uwo", "--penalty", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model_versions"] == versions and res["combine"] == "uwo" and len(res["scores"]) == 2
    s = res["scores"][0]
    z = list(s["z_by_version"].values())
    assert s["reward"] == pytest.approx(np.mean(z) - 2 * np.std(z)) and s["std"] == pytest.approx(np.std(z))
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"versions {versions[0]}, {versions[1]}, combined by mean" in text and f"v{versions[1]}" in text
    assert main(["score", "--model", str(versions[0]), "--model", "nope", "--prompt", "p", "--response", "r"]) == 1
    assert "model version 'nope'" in capsys.readouterr().err


def test_cli_eval_measures_the_combined_reward(sqlite_db: Database, engine_settings, versions: list[int], capsys,
                                               tmp_path: Path) -> None:
    lines = [{"prompt": "how to bake bread", "response_a": RESPONSES[2], "response_b": RESPONSES[1], "winner": "a"},
             {"prompt": "how to fix a bike", "response_a": RESPONSES[1], "response_b": RESPONSES[0], "winner": "b"},
             {"prompt": "tips for tea", "responses": RESPONSES, "ranking": [2, 3, 1]}]
    f = tmp_path / "eval.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert main(["eval", str(f), "--format", "mixed", "--model", str(versions[0]), "--model", str(versions[1]),
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model_versions"] == versions and res["combine"] == "mean" and "model_version" not in res
    assert res["n"] == 5 and res["spearman"]["n_prompts"] == 1
    # the accuracy is that of the mean z of the two versions, computed here from each version alone
    ens = VersionEnsemble.load(sqlite_db, engine_settings, versions)
    rc = ens.rewards([("how to bake bread", None, RESPONSES[2]), ("how to fix a bike", None, RESPONSES[0])])
    rr = ens.rewards([("how to bake bread", None, RESPONSES[1]), ("how to fix a bike", None, RESPONSES[1])])
    tea = ens.rewards([("tips for tea", None, r) for r in RESPONSES])
    ranked = [(tea[2], tea[0]), (tea[2], tea[1]), (tea[0], tea[1])]  # ranks 1 > 2 > 3 as (better, worse)
    wins = int((rc > rr).sum()) + sum(a > b for a, b in ranked)
    assert res["accuracy"] == pytest.approx(wins / 5)
    assert main(["eval", str(f), "--format", "mixed", "--model", str(versions[0]), "--model", str(versions[1]),
                 "--combine", "min"]) == 0
    assert f"model versions {versions[0]}, {versions[1]} (min of z)" in capsys.readouterr().out
