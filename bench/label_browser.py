"""Browser bench of the Label page: key press to the next pair painted, in headless Chromium against
``rmstudio serve``, with 100,000 labels in the database.

    python bench/label_browser.py                                   # this checkout, 60 key presses
    python bench/label_browser.py --tree /tmp/label-before --tree . # two checkouts in one run, presses alternated
    python bench/label_browser.py --labels 20000 --presses 20       # a quick run
    python bench/label_browser.py --json out.json

The database is filled through the bulk import path (``db.importer.import_file``): 100,000 labels by 50
annotators on 20,000 pairs (5 each, short texts), then 3,000 unlabelled pairs with realistic responses (Markdown,
lists, a code block; 1-6 KB) that the queue offers first. The labeler is ``ann007`` (2,000 labels of their own:
"never the same pair twice" does real work), through a personal link. The database is filled once, by the first
tree, and copied for each other one (newer code upgrades the copy when it starts: give the oldest tree first).

What is timed, per key press ("1", A better), in the page's own clock (``performance.now()``):

* ``total``: the ``keydown`` event to the first frame painted after both responses of the new pair (found by the
  marker each response text starts with) and its "Pair #N" caption are in the page: a MutationObserver sees them,
  then ``requestAnimationFrame`` + ``setTimeout(0)`` passes the paint.
* ``server``: from the first websocket message the page sent after the key to the last one it received before that
  paint (the server's callback, label write, queue and script run, plus localhost's round trip).
* ``browser``: the rest (key handling, applying the deltas, React rendering, layout and paint).

Between presses the bench waits until the app is idle, then ``--read-ms`` more (a labeler reading the pair). With
several trees, each one's server runs at once and presses alternate in blocks of five, so that the shared
machine's load falls on every tree alike; each tree's numbers come with the load average over its presses.

Target: p50 < 100 ms, p95 < 150 ms at 100,000 labels.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("RMSTUDIO_CHROMIUM", "/usr/bin/chromium")
LABELER = "ann007"
BLOCK = 5  # presses on one tree before the next tree's turn


@dataclass(frozen=True)
class BrowserBenchConfig:
    """Sizes of the bench database and of the measurement."""

    labels: int = 100_000
    labels_per_pair: int = 5
    annotators: int = 50
    open_pairs: int = 3_000
    presses: int = 60
    warmup: int = 5
    read_ms: int = 600
    width: int = 1366
    height: int = 768
    seed: int = 0


@dataclass
class TreeResult:
    """One checkout's latencies (ms) and the load average (1 min) sampled over its presses."""

    tree: str
    commit: str
    total_ms: dict[str, float] = field(default_factory=dict)
    server_ms: dict[str, float] = field(default_factory=dict)
    browser_ms: dict[str, float] = field(default_factory=dict)
    load_avg: dict[str, float] = field(default_factory=dict)
    raw_total_ms: list[float] = field(default_factory=list)


def pct(xs: list[float]) -> dict[str, float]:
    """p50, p95 and max of ``xs`` (milliseconds), rounded to 0.1 ms."""
    s = sorted(xs)
    p95 = s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]
    return {"p50": round(statistics.median(s), 1), "p95": round(p95, 1), "max": round(s[-1], 1), "n": len(s)}


# ----------------------------------------------------------------------------------------------- data


def _answer(rng: random.Random, marker: str) -> str:
    """A realistic response: paragraphs, a list, often a code block; starts with its marker."""
    words = ("the model reward label pair answer prompt value result function data first second because "
             "however example consider which would should this that").split()

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(8, 20))).capitalize() + "."

    parts = [f"Answer {marker}: " + " ".join(sentence() for _ in range(rng.randint(2, 5)))]
    for _ in range(rng.randint(1, 4)):
        parts.append(" ".join(sentence() for _ in range(rng.randint(3, 7))))
    parts.append("\n".join(f"- **{rng.choice(words)}**: {sentence()}" for _ in range(rng.randint(2, 6))))
    if rng.random() < 0.6:
        body = "\n".join(f"    x{i} = compute({i}, {rng.choice(words)!r})  # {sentence()}"
                         for i in range(rng.randint(5, 30)))
        parts.append(f"```python\ndef solve():\n{body}\n    return x0\n```")
    parts.append(" ".join(sentence() for _ in range(rng.randint(2, 5))))
    return "\n\n".join(parts)


def write_files(folder: Path, cfg: BrowserBenchConfig) -> tuple[Path, Path]:
    """``labels.jsonl`` (comparisons: ``cfg.labels`` labels, ``labels_per_pair`` annotators per pair) and
    ``open.jsonl`` (unlabeled: ``open_pairs`` pairs with realistic responses)."""
    rng = random.Random(cfg.seed)
    labelled = folder / "labels.jsonl"
    with labelled.open("w") as f:
        for n in range(cfg.labels):
            p = n // cfg.labels_per_pair
            ann = (p + n % cfg.labels_per_pair) % cfg.annotators
            f.write(json.dumps({"prompt": f"Seed prompt {p}: which is better?", "response_a": f"Seed answer {p}a.",
                                "response_b": f"Seed answer {p}b, longer.", "winner": rng.choice("ab"),
                                "annotator": f"ann{ann:03d}", "source": "crowd",
                                "category": f"cat{p % 12}"}) + "\n")
    unl = folder / "open.jsonl"
    with unl.open("w") as f:
        for p in range(cfg.open_pairs):
            f.write(json.dumps({"prompt": f"Open prompt {p}: " + _answer(rng, f"q{p}")[:400],
                                "responses": [_answer(rng, f"u{p}a"), _answer(rng, f"u{p}b")],
                                "category": f"cat{p % 12}"}) + "\n")
    return labelled, unl


SEED_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from db.annotators import invite
    from db.importer import import_file
    from db.labeling import QueuePolicy, save_queue_policy
    from db.policy import set_policy
    from db.session import Database
    url, labelled, unl, who = sys.argv[1:5]
    db = Database(url)
    t0 = time.perf_counter()
    reports = [import_file(db, labelled, format="comparisons"), import_file(db, unl, format="unlabeled")]
    seconds = time.perf_counter() - t0
    with db.write() as s:
        save_queue_policy(s, QueuePolicy(target_overlap=1, agreement_share=0.0))
        set_policy(s, enabled=False)
        token = invite(s, who, by="bench")
    db.dispose()
    print(json.dumps({"token": token, "import_s": round(seconds, 1), "labels": reports[0].labels_added,
                      "records": [r.records for r in reports]}))
""")


def seed(tree: Path, db_path: Path, cfg: BrowserBenchConfig, work: Path) -> dict[str, Any]:
    """Fill ``db_path`` through the bulk import path of ``tree``'s code; returns the labeler's token and timings."""
    labelled, unl = write_files(work, cfg)
    env = {**os.environ, "PYTHONPATH": str(tree), "RMSTUDIO_HOME": str(work)}
    out = subprocess.run([sys.executable, "-c", SEED_SCRIPT, f"sqlite:///{db_path}", str(labelled), str(unl), LABELER],
                         cwd=tree, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"seeding failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def pair_markers(db_path: Path) -> dict[str, list[str]]:
    """Comparison id -> the markers its two responses start with (open pairs only)."""
    con = sqlite3.connect(db_path)
    rows = con.execute("SELECT c.id, ra.text, rb.text FROM comparisons c JOIN responses ra ON ra.id = c.response_a_id "
                       "JOIN responses rb ON rb.id = c.response_b_id WHERE c.label_count = 0").fetchall()
    con.close()
    pat = re.compile(r"^Answer (\S+):")
    out = {}
    for cid, a, b in rows:
        ma, mb = pat.match(a), pat.match(b)
        if ma and mb:
            out[str(cid)] = [f"Answer {ma.group(1)}:", f"Answer {mb.group(1)}:"]
    return out


# ----------------------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """``rmstudio serve`` of one checkout (the app and a worker), on its own copy of the database."""

    tree: Path
    home: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def serve(tree: Path, home: Path) -> Server:
    """``python -m rm_engine serve`` run in ``tree`` (its own ``app`` and ``rm_engine``), waiting until it answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RMSTUDIO_RESEARCHER_TOKEN"}
    env.update(PYTHONPATH=str(tree), RMSTUDIO_HOME=str(home), RMSTUDIO_DB=f"sqlite:///{home / 'rmstudio.db'}",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    log = open(home / "serve.log", "wb")  # noqa: SIM115 - written by the server until it stops
    proc = subprocess.Popen([sys.executable, "-m", "rm_engine", "serve", "--port", str(port), "--address", "127.0.0.1",
                             "--device", "cpu"], cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(tree, home, port, proc)
    end = time.monotonic() + 120
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited:\n{(home / 'serve.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(server.url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"serve did not answer within 120 s:\n{(home / 'serve.log').read_text()[-3000:]}")


# ----------------------------------------------------------------------------------------------- browser

# Records when the page sends and receives websocket messages (Streamlit's protocol runs over one websocket).
WS_PROBE = """
(() => {
  const W = window.WebSocket;
  window.__ws = {sent: [], recv: []};
  const send = W.prototype.send;
  W.prototype.send = function (d) { window.__ws.sent.push(performance.now()); return send.call(this, d); };
  window.WebSocket = class extends W {
    constructor(...a) { super(...a); this.addEventListener('message', () => window.__ws.recv.push(performance.now())); }
  };
})();
"""

# Armed before each key press: resolves with the times of the keydown, of the new pair in the DOM and of the paint.
ARM = """
([old, markers]) => {
  const live = '[data-testid="stElementContainer"]:not([data-stale="true"])';
  const current = () => {
    for (const el of document.querySelectorAll(live + ' [data-testid="stCaptionContainer"]')) {
      const m = /^Pair #(\\d+)/.exec(el.textContent.trim());
      if (m) return m[1];
    }
    return null;
  };
  const shown = (text) => [...document.querySelectorAll(live + ' [data-testid="stMarkdownContainer"]')]
    .some(el => el.textContent.includes(text));
  window.__lat = new Promise((resolve) => {
    const r = {key: null, dom: null, paint: null, pair: null};
    document.addEventListener('keydown', (e) => { if (r.key === null) r.key = e.timeStamp; }, {capture: true});
    const check = () => {
      if (r.key === null || r.dom !== null) return;
      const pair = current();
      if (pair === null || pair === old || !markers[pair] || !markers[pair].every(shown)) return;
      r.dom = performance.now(); r.pair = pair; obs.disconnect();
      requestAnimationFrame(() => setTimeout(() => { r.paint = performance.now(); resolve(r); }, 0));
    };
    const obs = new MutationObserver(check);
    obs.observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true,
                                attributeFilter: ['data-stale']});
    setTimeout(() => { obs.disconnect(); resolve(r); }, 15000);
  });
  window.__ws.sent.length = 0; window.__ws.recv.length = 0;
  return current();
}
"""


def wait_idle(page: Any, timeout: float = 30.0) -> None:
    """Until no script run is going on (Streamlit's status widget gone for 0.2 s)."""
    end, quiet = time.monotonic() + timeout, None
    while time.monotonic() < end:
        if page.locator('[data-testid="stStatusWidget"]').count() == 0:
            quiet = quiet or time.monotonic()
            if time.monotonic() - quiet > 0.2:
                return
        else:
            quiet = None
        time.sleep(0.03)
    raise RuntimeError("the app kept running")


def press_once(page: Any, markers: dict[str, list[str]]) -> dict[str, float]:
    """Press "1" with no widget focused; the latencies of this press (ms)."""
    old = page.evaluate(ARM, [None, markers])
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.keyboard.press("1")
    r = page.evaluate("window.__lat")
    if r["paint"] is None:
        raise RuntimeError(f"no new pair painted within 15 s after pair #{old}")
    ws = page.evaluate("window.__ws")
    sent = [t for t in ws["sent"] if t >= r["key"]]
    recv = [t for t in ws["recv"] if t <= r["dom"]]
    total = r["paint"] - r["key"]
    server = (recv[-1] - sent[0]) if sent and recv and recv[-1] > sent[0] else float("nan")
    return {"total": total, "server": server, "browser": total - server}


def open_page(browser: Any, server: Server, token: str, cfg: BrowserBenchConfig) -> Any:
    ctx = browser.new_context(viewport={"width": cfg.width, "height": cfg.height})
    ctx.add_init_script(WS_PROBE)
    page = ctx.new_page()
    page.goto(f"{server.url}/?invite={token}")
    page.get_by_role("button", name="A better").first.wait_for(timeout=120_000)
    wait_idle(page, 120)
    return page


def commit_of(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         check=False)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "app", "db"], capture_output=True,
                           text=True, check=False).stdout.strip()
    return (out.stdout.strip() or "?") + (" + working tree" if dirty else "")


def run(trees: list[Path], cfg: BrowserBenchConfig, logs: Path | None = None) -> dict[str, Any]:
    """Seed once, serve every tree, press keys in alternating blocks; the results of every tree (each server's log
    copied to ``logs`` when given)."""
    with tempfile.TemporaryDirectory(prefix="rmstudio-labelbench-") as tmp:
        work = Path(tmp)
        first = work / "seed.db"
        t0 = time.perf_counter()
        seeded = seed(trees[0], first, cfg, work)
        seeded["seed_s"] = round(time.perf_counter() - t0, 1)
        print(f"seeded: {seeded['labels']} labels, import {seeded['import_s']} s", flush=True)
        markers = pair_markers(first)
        servers = []
        try:
            for i, tree in enumerate(trees):
                home = work / f"home{i}"
                home.mkdir()
                shutil.copy(first, home / "rmstudio.db")
                servers.append(serve(tree, home))
            results = [TreeResult(str(tree), commit_of(tree)) for tree in trees]
            samples: list[dict[str, list[float]]] = [{"total": [], "server": [], "browser": [], "load": []}
                                                     for _ in trees]
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
                pages = [open_page(browser, s, seeded["token"], cfg) for s in servers]
                for page in pages:  # warm-up presses, not counted
                    for _ in range(cfg.warmup):
                        press_once(page, markers)
                        wait_idle(page)
                done = 0
                while done < cfg.presses:
                    n = min(BLOCK, cfg.presses - done)
                    for i, page in enumerate(pages):
                        for _ in range(n):
                            page.wait_for_timeout(cfg.read_ms)
                            got = press_once(page, markers)
                            for k in ("total", "server", "browser"):
                                samples[i][k].append(got[k])
                            samples[i]["load"].append(os.getloadavg()[0])
                            wait_idle(page)
                    done += n
                    print(f"{done}/{cfg.presses} presses per tree", flush=True)
                version = browser.version
                browser.close()
            for r, s in zip(results, samples):
                r.total_ms = pct(s["total"])
                r.server_ms = pct([x for x in s["server"] if x == x])
                r.browser_ms = pct([x for x in s["browser"] if x == x])
                r.load_avg = {"min": min(s["load"]), "mean": round(statistics.mean(s["load"]), 2), "max": max(s["load"])}
                r.raw_total_ms = [round(x, 1) for x in s["total"]]
        finally:
            for i, s in enumerate(servers):
                s.stop()
                if logs is not None:
                    logs.mkdir(parents=True, exist_ok=True)
                    shutil.copy(s.home / "serve.log", logs / f"serve-{i}.log")
    return {"config": asdict(cfg), "seed": {k: v for k, v in seeded.items() if k != "token"},
            "results": [asdict(r) for r in results], "chromium": version,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", type=Path, action="append", help="checkout to serve (repeat; oldest first); default: this one")
    ap.add_argument("--labels", type=int, default=BrowserBenchConfig.labels)
    ap.add_argument("--open-pairs", type=int, default=BrowserBenchConfig.open_pairs)
    ap.add_argument("--presses", type=int, default=BrowserBenchConfig.presses)
    ap.add_argument("--read-ms", type=int, default=BrowserBenchConfig.read_ms)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--logs", type=Path, help="folder to keep each server's log in")
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"no Chromium at {CHROMIUM} (set RMSTUDIO_CHROMIUM)", file=sys.stderr)
        return 2
    cfg = BrowserBenchConfig(labels=args.labels, open_pairs=args.open_pairs, presses=args.presses,
                             read_ms=args.read_ms)
    trees = [t.resolve() for t in (args.tree or [REPO])]
    out = run(trees, cfg, args.logs)
    for r in out["results"]:
        print(f"{r['tree']} ({r['commit']}): key -> next pair painted {r['total_ms']}; server {r['server_ms']}; "
              f"browser {r['browser_ms']}; load average {r['load_avg']}")
    if len(out["results"]) > 1:
        base = out["results"][0]["total_ms"]
        for r in out["results"][1:]:
            print(f"{r['tree']} vs {out['results'][0]['tree']}: p50 {base['p50'] / r['total_ms']['p50']:.2f}x, "
                  f"p95 {base['p95'] / r['total_ms']['p95']:.2f}x faster")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    last = out["results"][-1]["total_ms"]
    ok = last["p50"] < 100 and last["p95"] < 150
    print("target met (p50 < 100 ms, p95 < 150 ms)" if ok else "TARGET MISSED (p50 < 100 ms, p95 < 150 ms)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
