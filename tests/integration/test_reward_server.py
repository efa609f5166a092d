"""``rmstudio reward-server`` as a real process (and the Train page's in-process snippet): an RL trainer's HTTP
requests (TRL-style strings and chat messages, OpenRLHF's query + prompt built as OpenRLHF builds them with a real
SentencePiece tokenizer) get the rewards RM Studio computes in process for the same conversation; a token is
enforced; bad bodies get 400 naming the problem, never 500; several versions serve their combined z; the server is
bounded (a 200 MB body refused with little memory, a large request refused within its time budget while a small
one is answered, a client that leaves stops its scoring) and SIGTERM stops it within seconds, even mid-batch."""
from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import select
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.use_model import usage_snippets
from cli import main
from db.config import Settings
from db.served import served_prompts, served_summary
from db.session import Database
from rm_engine.config import TrainConfig
from rm_engine.serving.ensemble import VersionEnsemble
from rm_engine.serving.reward_server import ServerConfig, build_app, model_scorer
from rm_engine.serving.scoring import RewardModel
from rm_engine.training import train_and_publish
from tests.chat_templates import LLAMA3, MISTRAL, QWEN2, QWEN2_DEFAULT_SYSTEM
from tests.integration import procs
from tests.integration.rm_seed import one_thread, seed_labels, tiny_backbone  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["question 1: how do I go about fixing a bike?", "question 4: how do I go about saving money?"]
ANSWERS = ["happy to help, step by step about fixing a bike.", "ugh, not answering that (saving money) #4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, body: object = None, token: str | None = None, raw: bytes | None = None,
          timeout: float = 30) -> tuple[int, dict]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json",
                                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _start(tmp_path: Path, name: str, *args: str, token: str | None = None, env: dict[str, str] | None = None):
    port = _free_port()
    proc = procs.spawn([sys.executable, "-m", "cli", "reward-server", "--port", str(port), "--device", "cpu",
                        *args], out_dir=tmp_path, name=name, env={"RMSTUDIO_REWARD_TOKEN": token or "", **(env or {})})
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
        assert status == 400 and "2 prompts for 1 completions; send one prompt per completion" in out["error"]
        assert out["field"] == "prompts"
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


def _version(db: Database, home: Path, seed: int = 0) -> int:
    """A tiny head-mode version trained on learnable synthetic labels (seconds)."""
    seed_labels(db, 12)
    return train_and_publish(db, Settings.from_env(), TrainConfig(
        mode="head", backbone=str(tiny_backbone(home)), epochs=20, lr=1e-2, max_length=64, seed=seed)).id


# ---- OpenRLHF's remote reward model client, as OpenRLHF builds its requests ----

@pytest.fixture(scope="session")
def mistral_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with Mistral-7B v0.1's SentencePiece ``tokenizer.model``, as the mistral-common wheel ships it."""
    from importlib.resources import files

    folder = tmp_path_factory.mktemp("mistral-7b-v0.1")
    shutil.copy(str(files("mistral_common") / "data" / "tokenizer.model.v1"), folder / "tokenizer.model")
    return folder


def _policy_tokenizer(folder: Path, template: str, special: tuple[str, ...] = ()):
    """The policy's tokenizer as OpenRLHF sets it up: legacy SentencePiece (a space after special tokens when
    decoding), left padding, pad = eos when it has no pad token; ``special``: a chat format's markers as special
    tokens, as Qwen's and Llama-3's tokenizers have them."""
    from transformers import LlamaTokenizer

    tok = LlamaTokenizer.from_pretrained(str(folder), legacy=True)
    if special:
        tok.add_special_tokens({"additional_special_tokens": list(special)})
    tok.chat_template = template
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _openrlhf_body(tok, conversations: list[list[dict]], responses: list[str], *, prompt_max_len: int = 1024,
                   truncation_side: str = "right") -> dict:
    """A remote-RM request as OpenRLHF makes it: each prompt is ``apply_chat_template(..., tokenize=False,
    add_generation_prompt=True)``; the experience maker tokenizes the prompts without special tokens, truncated to
    ``prompt_max_len`` and left-padded; the policy's response ids end with eos and are right-padded; the queries are
    ``batch_decode(sequences, skip_special_tokens=False)``; the body is ``{"query", "prompts", "labels"}``."""
    prompts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    tok.truncation_side = truncation_side
    enc = tok(prompts, add_special_tokens=False, max_length=prompt_max_len, truncation=True, padding=True)
    outs = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in responses]
    width = max(len(o) for o in outs)
    sequences = [p + o + [tok.pad_token_id] * (width - len(o)) for p, o in zip(enc["input_ids"], outs)]
    return {"query": tok.batch_decode(sequences, skip_special_tokens=False), "prompts": prompts,
            "labels": [None] * len(prompts)}


SYSTEM = {"role": "system", "content": "You are a careful assistant."}
CONVERSATIONS = [
    [{"role": "user", "content": "question 1: how do I go about fixing a bike?"}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello. What do you need?"},
     {"role": "user", "content": "question 4: how do I go about saving money?\nBe concrete."}],
]
RESPONSES = ["happy to help, step by step about fixing a bike.", "ugh, not answering that (saving money) #4"]
LONG_TURN = [{"role": "user", "content": "I have a long question. " * 6 + "question 7: how do I go about training a "
                                         "dog, given all of that?"}]


@pytest.mark.timeout(300)
def test_openrlhf_requests_get_the_score_of_their_conversation(sqlite_db: Database, home: Path, tmp_path: Path,
                                                              mistral_tokenizer: Path) -> None:
    vid = _version(sqlite_db, home)
    model = RewardModel.load(sqlite_db, Settings.from_env(), vid)

    def want(conversations: list[list[dict]], responses: list[str]) -> list[float]:
        return [s.z for s in model.score_rows([(c[-1]["content"], c[:-1] or None, r)
                                               for c, r in zip(conversations, responses)])]

    mistral = _policy_tokenizer(mistral_tokenizer, MISTRAL)
    chatml = _policy_tokenizer(mistral_tokenizer, QWEN2, ("<|im_start|>", "<|im_end|>"))
    llama3 = _policy_tokenizer(mistral_tokenizer, LLAMA3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))
    long_convs = [LONG_TURN, CONVERSATIONS[1]]
    cases = [  # name, tokenizer, conversations, how OpenRLHF cuts long prompts
        ("mistral [INST]", mistral, CONVERSATIONS, {}),
        ("mistral, prompts cut on the left", mistral, long_convs, {"prompt_max_len": 24, "truncation_side": "left"}),
        ("chatml with a system message", chatml, [[SYSTEM, *CONVERSATIONS[0]], CONVERSATIONS[1]], {}),
        ("llama-3 with a system message", llama3, [[SYSTEM, *c] for c in CONVERSATIONS], {}),
        ("llama-3, prompts cut on the left", llama3, [[SYSTEM, *c] for c in long_convs], {"prompt_max_len": 20,
                                                                                         "truncation_side": "left"}),
    ]
    proc, url = _start(tmp_path, "openrlhf", "--model", str(vid))
    try:
        for name, tok, convs, cut in cases:
            body = _openrlhf_body(tok, convs, RESPONSES, **cut)
            if cut:  # the first prompt is longer than OpenRLHF keeps: its query holds only the prompt's end
                assert len(tok(body["prompts"][0], add_special_tokens=False)["input_ids"]) > cut["prompt_max_len"]
            status, out = _call(f"{url}/score", body)
            assert status == 200, (name, out)
            if tok is chatml:  # Qwen2's template adds its default system message where there is none
                convs = [c if c[0]["role"] == "system" else [{"role": "system", "content": QWEN2_DEFAULT_SYSTEM}, *c]
                         for c in convs]
            assert out["rewards"] == pytest.approx(want(convs, RESPONSES), abs=1e-5), name
            # the same conversations as chat messages (TRL's form) score the same: the markup changed nothing
            chat = {"prompts": convs, "completions": RESPONSES}
            assert _call(f"{url}/score", chat)[1]["rewards"] == pytest.approx(out["rewards"], abs=1e-5), name
        # older OpenRLHF sends the queries alone: read through their chat markup
        body = _openrlhf_body(llama3, [[SYSTEM, *c] for c in CONVERSATIONS], RESPONSES)
        status, out = _call(f"{url}/score", {"query": body["query"]})
        assert status == 200 and out["rewards"] == pytest.approx(want([[SYSTEM, *c] for c in CONVERSATIONS],
                                                                      RESPONSES), abs=1e-5)
    finally:
        _stop(proc)
    with sqlite_db.read() as s:  # the conversation's prompt is recorded, not the markup
        served = served_prompts(s)
    assert sorted(served) == sorted({c[-1]["content"] for c in [*CONVERSATIONS, *long_convs]})


# ---- bounds ----

def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS since the last reset) of a process, in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1])
    return out


def _post_streaming(port: int, size: int, *, chunked: bool, piece: int = 1 << 20) -> tuple[int, dict, int]:
    """POST a body of ``size`` bytes (a JSON object with one huge string) piece by piece, stopping as soon as an
    answer arrives; returns the status, the answer and the bytes sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
        sock.sendall(f"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
                     .encode())
        sent, head = 0, b'{"prompts": ["'
        while sent < size and not select.select([sock], [], [], 0)[0]:
            data = (head + b"a" * (piece - len(head)))[:size - sent]
            head = b""
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(data)
        raw = b""
        while b"\r\n\r\n" not in raw or len(raw.split(b"\r\n\r\n", 1)[1]) < int(
                re.search(rb"content-length: (\d+)", raw.lower())[1]):
            more = sock.recv(65536)
            assert more, f"connection closed before an answer: {raw!r}"
            raw += more
        status_line, rest = raw.split(b"\r\n", 1)
        return int(status_line.split()[1]), json.loads(rest.split(b"\r\n\r\n", 1)[1]), sent
    finally:
        sock.close()


def _rows(n: int, tag: str) -> dict:
    return {"prompts": [f"{tag} question {i}: how do I go about fixing a bike?" for i in range(n)],
            "completions": [f"happy to help, step {i} of fixing a bike." for i in range(n)]}


def _health(url: str) -> dict:
    return _call(f"{url}/health")[1]


@pytest.mark.timeout(300)
def test_the_reward_server_is_bounded(sqlite_db: Database, home: Path, tmp_path: Path) -> None:
    vid = _version(sqlite_db, home)
    budget = 10.0
    # each chunk of 64 rows takes at least 0.4 s: a 4,096-row request needs 25 s or more, a small one 0.4 s
    proc, url = _start(tmp_path, "bounded", "--model", str(vid), "--time-budget", str(budget), "--no-record-prompts",
                       env={"RMSTUDIO_FAULT_PAUSE": "reward-server:chunk", "RMSTUDIO_FAULT_SECONDS": "0.4"})
    port = int(url.rsplit(":", 1)[1])
    try:
        # 1. bodies past the 32 MiB cap are refused as they arrive, with little memory
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # peak RSS counted from here
        before = _status(proc.pid)["VmRSS"]
        for chunked in (True, False):
            status, out, sent = _post_streaming(port, 200 * 2**20, chunked=chunked)
            assert status == 413 and "at most 33,554,432" in out["error"] and out["field"] == "body"
            assert sent < 120 * 2**20  # answered long before the 200 MB were sent
        status, out = _call(f"{url}/score", {"prompts": ["a" * 20_000_000], "completions": ["b"]})  # 20 MB, in cap
        assert status == 413 and "'prompts'[0] holds 20,000,000 characters; at most 400,000" in out["error"]
        status, out = _call(f"{url}/score", raw=b"[" * 100_000 + b"]" * 100_000)
        assert status == 400 and "nested too deeply" in out["error"]
        assert (_status(proc.pid)["VmHWM"] - before) / 1024 < 300, _status(proc.pid)

        # 2. a 4,096-row request is refused within its budget, and a small request sent meanwhile is answered
        big: dict = {}

        def send_big() -> None:
            t0 = time.monotonic()
            big["status"], big["out"] = _call(f"{url}/score", _rows(4096, "big"), timeout=60)
            big["took"], big["at"] = time.monotonic() - t0, time.monotonic()

        thread = threading.Thread(target=send_big)
        thread.start()
        procs.wait_for(lambda: 0 < _health(url)["pending_rows"] < 4096, 30, "the large request to be scored")
        t0 = time.monotonic()
        status, out = _call(f"{url}/score", _rows(3, "small"))
        small_at = time.monotonic()
        assert status == 200 and len(out["rewards"]) == 3 and small_at - t0 < 3
        thread.join(60)
        assert big["status"] == 503 and "send at most about" in big["out"]["error"], big
        assert big["took"] <= budget + 2 and big["at"] > small_at
        assert _health(url)["requests"]["over_budget"] == 1

        # 3. a client that leaves: its request stops being scored at once
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        body = json.dumps(_rows(4096, "gone")).encode()
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                     b"%s" % (len(body), body))
        procs.wait_for(lambda: 0 < _health(url)["pending_rows"] < 4096, 30, "the request to be scored")
        sock.close()
        procs.wait_for(lambda: _health(url)["pending_rows"] == 0, 3, "the scoring of a departed client to stop")
        assert _health(url)["requests"] == {"answered": 1, "over_budget": 1, "client_gone": 1, "failed": 0}
    finally:
        if proc.poll() is None:
            procs.kill9(proc)


@pytest.mark.timeout(300)
def test_sigterm_stops_the_server_within_seconds_even_mid_batch(sqlite_db: Database, home: Path,
                                                               tmp_path: Path) -> None:
    vid = _version(sqlite_db, home)
    # a runaway batch: each chunk takes two minutes
    proc, url = _start(tmp_path, "runaway", "--model", str(vid), "--no-record-prompts",
                       env={"RMSTUDIO_FAULT_PAUSE": "reward-server:chunk", "RMSTUDIO_FAULT_SECONDS": "120"})
    try:
        answers: list = []
        threads = [threading.Thread(target=lambda n=n: answers.append(_call(f"{url}/score", _rows(n, "x"),
                                                                           timeout=60)[0])) for n in (4096, 2)]
        threads[0].start()
        procs.wait_for(lambda: _health(url)["pending_rows"] == 4096, 30, "the large request to be queued")
        threads[1].start()
        procs.wait_for(lambda: _health(url)["pending_rows"] == 4098, 30, "the small request to be queued")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0 and time.monotonic() - t0 < 10
        for t in threads:
            t.join(10)
        assert answers == [503, 503]  # both told the server stopped, neither left hanging
    finally:
        if proc.poll() is None:
            procs.kill9(proc)


# ---- any body: rewards or a 4xx naming the problem, never a 500 ----

TEXTS = st.one_of(
    st.text(st.characters() | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=30),
    st.sampled_from(["<s>[INST] hi [/INST]", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "</s>",
                     "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>", "[/INST] ok"]))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                max_size=3), max_leaves=12)
MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]) | TEXTS,
                           "content": TEXTS | st.lists(st.fixed_dictionaries({"type": st.just("text"),
                                                                              "text": TEXTS | JSON}), max_size=2)}),
    JSON)
ITEMS = st.lists(st.one_of(TEXTS, st.lists(MESSAGE, max_size=3), JSON), max_size=5) | JSON
BODIES = st.one_of(
    st.fixed_dictionaries({}, optional={"prompts": ITEMS, "completions": ITEMS, "query": ITEMS, "labels": ITEMS})
    .map(lambda b: json.dumps(b).encode()),
    st.builds(lambda n, q: {"query": [p + "sure." for p in q][:n], "prompts": q},
              st.integers(0, 4), st.lists(TEXTS, max_size=4)).map(lambda b: json.dumps(b).encode()),
    JSON.map(lambda b: json.dumps(b).encode()),
    st.binary(max_size=64),
    st.integers(1, 200_000).map(lambda n: b"{\"prompts\": " + b"[" * n),
)


@pytest.mark.timeout(300)
def test_any_request_body_gets_rewards_or_a_4xx_naming_the_problem(sqlite_db: Database, home: Path) -> None:
    from starlette.testclient import TestClient

    vid = _version(sqlite_db, home)
    model = RewardModel.load(sqlite_db, Settings.from_env(), vid)
    app = build_app(model_scorer(model), {"versions": [vid]}, ServerConfig(max_rows=4, max_text_chars=1000))
    with TestClient(app) as client:  # raises any exception the app lets out (what would be a 500)

        @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(raw=BODIES)
        def check(raw: bytes) -> None:
            r = client.post("/score", content=raw, headers={"Content-Type": "application/json"})
            out = r.json()
            if r.status_code == 200:
                body = json.loads(raw)
                n = len(body["completions"] if "completions" in body else body["query"])
                assert len(out["rewards"]) == n and all(isinstance(x, float) for x in out["rewards"])
            else:
                assert r.status_code in (400, 413) and isinstance(out["error"], str) and len(out["error"]) > 20

        check()
