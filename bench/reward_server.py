"""What serving rewards over HTTP costs (``rmstudio reward-server``), by hand, not in CI.

A head-mode MiniLM version trained on the demo data scores HH-harmless rows (chat history + prompt as messages,
the chosen response as the completion) in batches, first in process through ``reward_function`` (the baseline,
what a GRPO loop with RM Studio installed calls), then through a real ``rmstudio reward-server`` process on this
machine with the same batches as ``POST /score``. Both compute every feature afresh (scoring does not use the
feature cache), so the ratio is the HTTP round trip, JSON and the server's thread hop. Also the latency of a
one-row request, and 4-row requests from one client against 8 clients at once (the server scores requests that
wait together).

    python bench/reward_server.py [--rows 96] [--batch 32]

Prints one JSON and a table; ratios are against the in-process baseline of the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hh_data import load_hh


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="rmstudio-bench-") as home:
        env = {**os.environ, "RMSTUDIO_HOME": home, "RMSTUDIO_DB": f"sqlite:///{home}/rmstudio.db"}
        os.environ.update(env)
        from db.config import Settings
        from db.demo import seed_demo
        from db.session import Database
        from rm_engine.config import TrainConfig
        from rm_engine.serving.scoring import RewardModel, reward_function
        from rm_engine.training import train_and_publish

        settings = Settings.from_env()
        db = Database(settings.db_url)
        seed_demo(db)
        t0 = time.perf_counter()
        vid = train_and_publish(db, settings, TrainConfig(mode="head")).id
        print(f"trained head version {vid} on the demo labels in {time.perf_counter() - t0:.1f} s", flush=True)

        hh = load_hh(limit=args.rows)
        prompts = [[{"role": r, "content": t} for r, t in p.history] + [{"role": "user", "content": p.prompt}]
                   for p in hh]
        completions = [p.chosen for p in hh]
        batches = [(prompts[i:i + args.batch], completions[i:i + args.batch]) for i in range(0, len(hh), args.batch)]

        reward = reward_function(RewardModel.load(db, settings, vid), kind="z")
        reward(*batches[0])  # load the backbone before timing
        t0 = time.perf_counter()
        local = [x for p, c in batches for x in reward(p, c)]
        t_local = time.perf_counter() - t0

        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "cli", "reward-server", "--model", str(vid),
                                   "--port", str(port), "--device", "cpu"], env=env, cwd=Path(__file__).parents[1],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                try:
                    urllib.request.urlopen(f"{url}/health", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.2)
            _post(f"{url}/score", {"prompts": batches[0][0], "completions": batches[0][1]})  # warm-up
            t0 = time.perf_counter()
            remote = [x for p, c in batches for x in _post(f"{url}/score", {"prompts": p, "completions": c})["rewards"]]
            t_http = time.perf_counter() - t0
            # RL workers sending small requests (4 rows): one at a time, then 8 at once, which the server batches
            small = [(prompts[i:i + 4], completions[i:i + 4]) for i in range(0, len(hh), 4)]
            t0 = time.perf_counter()
            for p, c in small:
                _post(f"{url}/score", {"prompts": p, "completions": c})
            t_small_seq = time.perf_counter() - t0
            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda pc: _post(f"{url}/score", {"prompts": pc[0], "completions": pc[1]}), small))
            t_small_conc = time.perf_counter() - t0
            one_local, one_http = [], []
            for i in range(5):
                t0 = time.perf_counter()
                reward(prompts[i:i + 1], completions[i:i + 1])
                one_local.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                _post(f"{url}/score", {"prompts": prompts[i:i + 1], "completions": completions[i:i + 1]})
                one_http.append(time.perf_counter() - t0)
        finally:
            server.terminate()
            server.wait(timeout=60)
        db.dispose()

    max_diff = max(abs(a - b) for a, b in zip(local, remote))
    report = {
        "date": time.strftime("%Y-%m-%d"), "rows": len(hh), "batch": args.batch, "cpus": os.cpu_count(),
        "in_process_rows_per_s": round(len(hh) / t_local, 2), "http_rows_per_s": round(len(hh) / t_http, 2),
        "ratio_http_over_in_process_time": round(t_http / t_local, 3),
        "small_requests_rows_per_s_one_client": round(len(hh) / t_small_seq, 2),
        "small_requests_rows_per_s_8_clients": round(len(hh) / t_small_conc, 2),
        "ratio_8_clients_over_one": round(t_small_seq / t_small_conc, 3),
        "one_row_ms_in_process": round(1000 * statistics.median(one_local), 1),
        "one_row_ms_http": round(1000 * statistics.median(one_http), 1),
        "max_abs_reward_diff": max_diff,
    }
    print(json.dumps(report, indent=2))
    print(f"\n{'path':<12}{'rows/s':>10}{'1-row ms':>10}\n{'in process':<12}{report['in_process_rows_per_s']:>10}"
          f"{report['one_row_ms_in_process']:>10}\n{'HTTP':<12}{report['http_rows_per_s']:>10}"
          f"{report['one_row_ms_http']:>10}\nHTTP / in-process time: {report['ratio_http_over_in_process_time']}x; "
          f"largest reward difference {max_diff:.2e}\n4-row requests: {report['small_requests_rows_per_s_one_client']} "
          f"rows/s from one client, {report['small_requests_rows_per_s_8_clients']} from 8 at once (batched "
          f"on the server): {report['ratio_8_clients_over_one']}x")
    return report


if __name__ == "__main__":
    main()
