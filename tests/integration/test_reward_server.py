"""``rmstudio reward-server`` as a real process (and the Train page's in-process snippet): an RL trainer's HTTP
requests (TRL-style strings and chat messages, OpenRLHF's query + prompt) get the rewards RM Studio computes in
process; a token is enforced; bad
bodies get 400 naming the problem; several versions serve their combined z; SIGTERM stops it cleanly."""
from __future__ import annotations

import ast
import contextlib
import io
import json
import signal
import socket
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.use_model import usage_snippets
from db.config import Settings
from db.served import served_prompts, served_summary
from db.session import Database
from rm_engine.cli import main
from rm_engine.config import TrainConfig
from rm_engine.scoring import RewardModel
from rm_engine.training import train_and_publish
from rm_engine.version_ensemble import VersionEnsemble
from tests.integration import procs
from tests.integration.rm_seed import one_thread, seed_labels, tiny_backbone  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["question 1: how do I go about fixing a bike?", "question 4: how do I go about saving money?"]
ANSWERS = ["happy to help, step by step about fixing a bike.", "ugh, not answering that (saving money) #4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, body: object = None, token: str | None = None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json",
                                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _start(tmp_path: Path, name: str, *args: str, token: str | None = None):
    port = _free_port()
    proc = procs.spawn([sys.executable, "-m", "rm_engine", "reward-server", "--port", str(port), "--device", "cpu",
                        *args], out_dir=tmp_path, name=name, env={"RMSTUDIO_REWARD_TOKEN": token or ""})
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}: {(tmp_path / f'{name}.out').read_text()}")
        try:
            return _call(f"{url}/health")[0] == 200
        except OSError:
            return False

    procs.wait_for(up, 120, f"{name} to answer /health")
    return proc, url


def _stop(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


@pytest.mark.timeout(300)
def test_reward_server_scores_like_rm_studio(sqlite_db: Database, home: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    seed_labels(sqlite_db, 12)
    backbone = tiny_backbone(home)
    v1, v2 = (train_and_publish(sqlite_db, Settings.from_env(), TrainConfig(
        mode="head", backbone=str(backbone), epochs=20, lr=1e-2, max_length=64, seed=seed, ensemble=2)).id
        for seed in (0, 1))
    model = RewardModel.load(sqlite_db, Settings.from_env(), v1)
    want = model.score_rows([(p, None, a) for p, a in zip(PROMPTS, ANSWERS)])

    # the Train page's "Use this version" Python snippet runs as shown and prints these rewards
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(usage_snippets(v1)["python"], {})  # noqa: S102 - our own snippet
    shown = ast.literal_eval(out.getvalue().strip())
    assert shown == pytest.approx([s.z for s in model.score("How do I bake bread?",
                                                            ["Mix flour, water, yeast and salt; knead; bake."])])

    proc, url = _start(tmp_path, "one", "--model", str(v1), token="s3cret")
    try:
        status, health = _call(f"{url}/health")
        assert status == 200 and health["model"]["versions"] == [v1] and health["model"]["reward"] == "z"
        status, out = _call(f"{url}/score", {"prompts": PROMPTS, "completions": ANSWERS})
        assert status == 401 and "Bearer" in out["error"]
        status, out = _call(f"{url}/score", {"prompts": PROMPTS, "completions": ANSWERS}, token="wrong")
        assert status == 401

        status, out = _call(f"{url}/score", {"prompts": PROMPTS, "completions": ANSWERS}, token="s3cret")
        assert status == 200 and out["model"]["versions"] == [v1]
        assert out["rewards"] == pytest.approx([s.z for s in want], abs=1e-5) and out["scores"] == out["rewards"]
        unit = model.norm_stats["std"]  # the members' disagreement in the reward's (z) units
        assert out["std"] == pytest.approx([s.std / unit for s in want], abs=1e-5) and min(out["std"]) > 0  # 2 heads
        assert out["rewards"][0] > out["rewards"][1]  # the helpful answer wins

        # several RL workers at once: batched together on the server, each still gets its own rows' rewards
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda k: _call(f"{url}/score", {"prompts": [PROMPTS[k % 2]] * (1 + k % 3),
                                                                   "completions": [ANSWERS[k % 2]] * (1 + k % 3)},
                                                     token="s3cret")[1]["rewards"], range(6)))
        assert answers == [pytest.approx([out["rewards"][k % 2]] * (1 + k % 3), abs=1e-5) for k in range(6)]

        chat = {"prompts": [[{"role": "user", "content": p}] for p in PROMPTS],
                "completions": [[{"role": "assistant", "content": a}] for a in ANSWERS]}
        assert _call(f"{url}/score", chat, token="s3cret")[1]["rewards"] == pytest.approx(out["rewards"], abs=1e-5)
        openrlhf = {"query": [p + a for p, a in zip(PROMPTS, ANSWERS)], "prompts": PROMPTS}
        got = _call(f"{url}/score", openrlhf, token="s3cret")[1]["rewards"]
        assert got == pytest.approx([s.z for s in model.score_rows([(p, None, a) for p, a in zip(PROMPTS, ANSWERS)])],
                                    abs=1e-5)

        status, out = _call(f"{url}/score", {"prompts": PROMPTS, "completions": ANSWERS[:1]}, token="s3cret")
        assert status == 400 and "2 prompts for 1 completions" in out["error"]
        status, out = _call(f"{url}/score", raw=b"{not json", token="s3cret")
        assert status == 400 and out["error"].startswith("bad request")
    finally:
        _stop(proc)

    with sqlite_db.read() as s:  # every scored prompt was counted, for the Coverage tab; refused requests not
        assert sorted(served_prompts(s)) == sorted(PROMPTS)
        assert served_summary(s)["responses"] == 6 + 12  # three requests of two rows, six of 1-3

    proc, url = _start(tmp_path, "two", "--model", str(v1), "--model", str(v2), "--combine", "min",
                       "--no-record-prompts")
    try:
        ens = VersionEnsemble.load(sqlite_db, Settings.from_env(), [v1, v2], how="min")
        status, out = _call(f"{url}/score", {"prompts": PROMPTS, "completions": ANSWERS})  # no token needed here
        assert status == 200 and out["model"]["versions"] == [v1, v2] and out["model"]["reward"] == "min of z"
        assert out["rewards"] == pytest.approx([s.reward for s in ens.score(PROMPTS[0], ANSWERS[:1])]
                                               + [s.reward for s in ens.score(PROMPTS[1], ANSWERS[1:])], abs=1e-5)
    finally:
        _stop(proc)
    with sqlite_db.read() as s:
        assert served_summary(s)["responses"] == 18  # --no-record-prompts
    assert main(["served", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["prompts"], shown["responses"], sorted(shown["newest"])) == (2, 18, sorted(PROMPTS))
    assert main(["served", "--clear"]) == 0 and "forgot 2 served prompts" in capsys.readouterr().out
