"""A reward model over HTTP, for RL trainers that run in another process or on another machine (OpenRLHF's
``--remote_rm_url``, a GRPO loop whose environment lacks RM Studio).

``POST /score`` takes one batch and returns one reward per row (the bodies: :mod:`rm_engine.serving.reward_requests`)::

    {"prompts": [...], "completions": [...]}   strings or chat-message lists, as TRL's GRPO passes them
    {"query": [...], "prompts": [...]}         OpenRLHF: each query is its prompt followed by the response

and answers ``{"rewards": [...], "scores": [...], "model": ...}`` (``scores`` repeats ``rewards`` for OpenRLHF),
plus ``std`` per row (an ensemble's disagreement, in z units unless the reward is raw). ``GET /health`` describes
the loaded model, the server's limits and the rows waiting. A bad request gets status 400 (413 over the size
budget) and ``{"error", "field", "row"}`` naming the field and row and what to send instead; with a token set
(``RMSTUDIO_REWARD_TOKEN``), a request without ``Authorization: Bearer <token>`` gets 401.

Bounded: the body is read in pieces and refused (413) as soon as it passes ``max_body_bytes``, before the rest is
read; rows and characters per text have budgets; scoring runs in chunks shared by all waiting requests, each
request with a time budget (503 when it cannot make it, said as soon as its speed shows it); a request whose
client disconnects stops being scored; SIGTERM answers what waits with 503 and exits without waiting on the chunk
being scored (:mod:`rm_engine.serving.reward_scheduler`).

Each answered request's prompts are counted in the database (``db/served.py``; ``--no-record-prompts`` turns it
off), so the Dashboard's Coverage tab can check what the policy is really asked against the labelled prompts.
Built on Starlette and served by uvicorn, both already installed with Streamlit.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from db.bounds import bounded, check_fields, finite_json
from rm_engine.faults import fault_point
from rm_engine.serving.chat_markup import default_markups, load_markup
from rm_engine.serving.reward_requests import Reading, RequestError, Row, parse_request
from rm_engine.serving.reward_scheduler import OverBudget, Scheduler, ShuttingDown

REWARD_KINDS = ("raw", "z", "sigmoid")
SHUTDOWN_GRACE_S = 5  # after SIGTERM, the longest uvicorn waits for a request still being answered
log = logging.getLogger(__name__)

__all__ = ["REWARD_KINDS", "RequestError", "ServerConfig", "build_app", "ensemble_scorer", "model_scorer",
           "parse_request", "serve"]


@dataclass(frozen=True)
class ServerConfig:
    """How the reward server listens and what it accepts.

    Attributes:
        host: interface to bind; ``127.0.0.1`` (default) serves this machine only, ``0.0.0.0`` every interface
            (set a token then).
        port: TCP port.
        token: when set, every request but ``/health`` needs ``Authorization: Bearer <token>``
            (``RMSTUDIO_REWARD_TOKEN``).
        max_rows: most rows one request may hold (413 beyond).
        max_body_bytes: largest request body accepted (413 beyond, said before the rest of the body is read).
        max_text_chars: longest text (prompt, completion, query, message) accepted (413 beyond): tokenizing one
            text costs memory in proportion to its length.
        time_budget_s: longest a request may take, waiting included; one that cannot make it gets 503.
        chunk_rows: rows scored in one forward pass, shared by the waiting requests (a small request waits at
            most one chunk behind a large one).
        record_prompts: count each scored prompt in the database (``db/served.py``), for the Coverage tab:
            does the labelled data cover what the policy is asked?
        chat_template: the chat template whose markup is parsed from text before the built-in ones (a name, a
            Jinja file or a tokenizer folder: :func:`rm_engine.serving.chat_markup.load_markup`); None: the built-ins.
        drop_system: leave system messages out of the scored conversation (by default they are scored as
            earlier turns, as training saw them).
    """

    host: str = "127.0.0.1"
    port: int = 8600
    token: str | None = None
    max_rows: int = field(default=4096, metadata=bounded(1, 1 << 20, integer=True, help="rows per request"))
    max_body_bytes: int = field(default=32 * 2**20, metadata=bounded(1, 1 << 34, integer=True))
    max_text_chars: int = field(default=400_000, metadata=bounded(1, 1 << 30, integer=True))
    time_budget_s: float = field(default=120.0, metadata=bounded(0, 86_400, lo_open=True))
    chunk_rows: int = field(default=64, metadata=bounded(1, 1 << 16, integer=True))
    record_prompts: bool = True
    chat_template: str | None = None
    drop_system: bool = False

    def __post_init__(self) -> None:
        check_fields(self, lambda name: f"reward server {name.replace('_', '-')}")


Scorer = Callable[[Sequence[Row]], dict[str, list[float]]]  # (prompt, history, response) rows


def model_scorer(model: Any, kind: str = "z", penalty: float = 0.0) -> Scorer:
    """One version's rewards (``kind``: raw, z or sigmoid) with the std of its ensemble members, in raw units for
    ``raw``, else in z units (0 for one model). ``penalty`` (z only): ``z - penalty x std``, the uncertainty-weighted
    reward of Coste et al. over the version's own members, lower where they disagree."""
    if kind not in REWARD_KINDS:
        raise ValueError(f"reward kind must be one of {', '.join(REWARD_KINDS)}, got {kind!r}")
    if penalty and kind != "z":
        raise ValueError(f"an uncertainty penalty applies to z rewards, not {kind}")
    unit = 1.0 if kind == "raw" else float(model.norm_stats.get("std", 1.0) or 1.0)

    def score(rows: Sequence[Row]) -> dict[str, list[float]]:
        scores = model.score_rows(rows)
        std = [float(s.std) / unit for s in scores]
        return {"rewards": [float(getattr(s, kind)) - penalty * d for s, d in zip(scores, std)], "std": std}

    return score


def ensemble_scorer(ensemble: Any) -> Scorer:
    """Several versions' combined z (``VersionEnsemble``), with their disagreement as ``std``."""
    def score(rows: Sequence[Row]) -> dict[str, list[float]]:
        scores = ensemble.score_rows(rows)
        return {"rewards": [float(s.reward) for s in scores], "std": [float(s.std) for s in scores]}

    return score


class BodyTooLarge(Exception):
    """A request body over the server's byte budget."""


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, read in pieces; :class:`BodyTooLarge` as soon as it passes ``limit`` bytes (or when its
    declared length does), without reading the rest."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"a request body of {int(declared):,} bytes")
    buf = bytearray()
    async for piece in request.stream():
        buf += piece
        if len(buf) > limit:
            raise BodyTooLarge(f"a request body of more than {limit:,} bytes")
    return bytes(buf)


def decode(raw: bytes, reading: Reading) -> list[Row]:
    """The rows of a raw request body; :class:`RequestError` for anything but a well-formed request."""
    try:
        body = json.loads(raw) if raw.strip() else None
    except RecursionError:
        raise RequestError("the JSON is nested too deeply; send a flat object of lists", field="body") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise RequestError(f"the body is not JSON ({exc}); send a JSON object", field="body") from None
    return parse_request(body, reading)


def _error(status: int, message: str, field: str | None = None, row: int | None = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message, "field": field, "row": row}, status)


def build_app(scorer: Scorer, describe: dict[str, Any], cfg: ServerConfig,
              record: Callable[[list[str]], Any] | None = None) -> Any:
    """The Starlette application serving ``scorer`` (``describe``: what ``/health`` and each answer say of the
    model). ``record`` gets each answered request's prompt texts (the conversation's last user message, markup
    parsed away); its failures are logged, never the client's problem. ``app.state.scheduler`` is its
    :class:`Scheduler` (``serve`` closes it on shutdown)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route


    reading = Reading(default_markups(load_markup(cfg.chat_template) if cfg.chat_template else None),
                      drop_system=cfg.drop_system, max_rows=cfg.max_rows, max_text_chars=cfg.max_text_chars)

    def score_chunk(rows: Sequence[Row]) -> dict[str, list[float]]:
        fault_point("reward-server:chunk")  # the bounds tests: a chunk that takes long (a loaded machine)
        return scorer(rows)

    on_done = (lambda rows: record([r[0] for r in rows])) if record is not None else None
    scheduler = Scheduler(score_chunk, chunk_rows=cfg.chunk_rows, time_budget_s=cfg.time_budget_s, on_done=on_done)
    limits = {"max_rows": cfg.max_rows, "max_body_bytes": cfg.max_body_bytes, "max_text_chars": cfg.max_text_chars,
              "time_budget_s": cfg.time_budget_s, "chunk_rows": cfg.chunk_rows}
    reads = {"chat_templates": [m.name for m in reading.markups], "drop_system": cfg.drop_system}

    def refused(request: Request) -> JSONResponse | None:
        if cfg.token is None:
            return None
        given = request.headers.get("authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {cfg.token}".encode()):
            return None
        return _error(401, "missing or wrong token: send 'Authorization: Bearer <token>'", "Authorization")

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": describe, "limits": limits, "reads": reads,
                             "pending_rows": scheduler.pending_rows, "requests": scheduler.counts})

    async def until_disconnect(request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def score(request: Request) -> JSONResponse:
        if (denied := refused(request)) is not None:
            return denied
        try:
            raw = await read_body(request, cfg.max_body_bytes)
        except BodyTooLarge as exc:
            return _error(413, f"{exc}; at most {cfg.max_body_bytes:,}: send smaller batches", "body")
        except ClientDisconnect:
            return _error(400, "the client went away before sending the whole body", "body")
        try:  # a large body takes a while to read: off the event loop, which keeps answering meanwhile
            rows = await run_in_threadpool(decode, raw, reading)
        except RequestError as exc:
            return _error(exc.status, f"bad request: {exc}", exc.field, exc.row)
        job = scheduler.submit(rows)
        watcher = asyncio.ensure_future(until_disconnect(request))
        try:
            await asyncio.wait({job.future, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not job.future.done():  # the client went away, or the server cancelled this request
                scheduler.cancel(job)
        if job.future.cancelled():
            return _error(400, "the client went away before its rewards were ready")
        try:
            out = job.future.result()
        except (OverBudget, ShuttingDown) as exc:
            return _error(503, str(exc))
        except ValueError as exc:
            return _error(400, f"bad request: {exc}")
        except Exception as exc:  # a fault of the server's, said in the answer as well as in its log
            log.error("reward server: scoring failed", exc_info=exc)
            return _error(500, f"scoring failed on the server: {type(exc).__name__}: {exc}")
        out = finite_json(out)
        return JSONResponse({**out, "scores": out["rewards"], "model": describe})

    app = Starlette(routes=[Route("/health", health, methods=["GET"]), Route("/score", score, methods=["POST"])])
    app.state.scheduler = scheduler
    return app


def serve(app: Any, cfg: ServerConfig) -> None:
    """Serve ``app`` until interrupted (uvicorn; SIGINT and SIGTERM stop it cleanly, SIGTERM with exit code 0):
    waiting requests get 503 at once, a request still being answered gets :data:`SHUTDOWN_GRACE_S`, and the chunk
    being scored is not waited for."""
    import gc
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            app.state.scheduler.close()
            await super().shutdown(sockets=sockets)

    def stopped(_signum: int, _frame: Any) -> None:
        raise SystemExit(0)

    # The loaded model lives as long as the process: frozen, the garbage collector no longer walks its objects,
    # while serving nor at exit (where the walk took 5 s on a busy 2-core machine, after SIGTERM)
    gc.freeze()
    # uvicorn shuts down gracefully, then raises the signal it caught again under the handler found before it
    previous = signal.signal(signal.SIGTERM, stopped)
    try:
        Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                              timeout_graceful_shutdown=SHUTDOWN_GRACE_S)).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
