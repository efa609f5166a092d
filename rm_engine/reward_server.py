"""A reward model over HTTP, for RL trainers that run in another process or on another machine (OpenRLHF's
``--remote_rm_url``, a GRPO loop whose environment lacks RM Studio).

``POST /score`` takes one batch and returns one reward per row::

    {"prompts": [...], "completions": [...]}   strings or chat-message lists, as TRL's GRPO passes them
    {"query": [...], "prompts": [...]}         OpenRLHF: each query is its prompt followed by the response

and answers ``{"rewards": [...], "scores": [...], "model": ...}`` (``scores`` repeats ``rewards`` for OpenRLHF),
plus ``std`` per row (an ensemble's disagreement, in z units unless the reward is raw). ``GET /health`` describes
the loaded model. A bad request gets status 400 and ``{"error": ...}`` naming the field and row; with a token set
(``RMSTUDIO_REWARD_TOKEN``), a request without ``Authorization: Bearer <token>`` gets 401.

Each request's prompts are counted in the database (``db/served.py``; ``--no-record-prompts`` turns it off), so the
Dashboard's Coverage tab can check what the policy is really asked against the labelled prompts.

One scoring runs at a time (two at once would only fight over the same cores); requests that arrive meanwhile are
scored together in the next one (:class:`Batcher`). Built on Starlette and served by uvicorn, both already installed with Streamlit.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rm_engine.backbone import History
from rm_engine.scoring import completion_rows

REWARD_KINDS = ("raw", "z", "sigmoid")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    """How the reward server listens and what it accepts.

    Attributes:
        host: interface to bind; ``127.0.0.1`` (default) serves this machine only, ``0.0.0.0`` every interface
            (set a token then).
        port: TCP port.
        token: when set, every request but ``/health`` needs ``Authorization: Bearer <token>``
            (``RMSTUDIO_REWARD_TOKEN``).
        max_rows: most rows one request may hold.
        max_body_bytes: largest request body accepted.
        record_prompts: count each scored prompt in the database (``db/served.py``), for the Coverage tab:
            does the labelled data cover what the policy is asked?
    """

    host: str = "127.0.0.1"
    port: int = 8600
    token: str | None = None
    max_rows: int = 4096
    max_body_bytes: int = 32 * 2**20
    record_prompts: bool = True


class RequestError(ValueError):
    """A request body that cannot be scored; the message names the field (and row)."""


def _texts(body: dict[str, Any], field: str) -> list[Any]:
    value = body.get(field)
    if not isinstance(value, list):
        raise RequestError(f"'{field}' must be a list (of strings or chat-message lists), got "
                           f"{type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, (str, list)):
            raise RequestError(f"'{field}'[{i}] must be a string or a list of chat messages, got "
                               f"{type(item).__name__}")
        for k, m in enumerate(item if isinstance(item, list) else []):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), (str, list))):
                raise RequestError(f"'{field}'[{i}][{k}] must be a chat message: an object with a string 'role' "
                                   "and a 'content'")
    return value


def parse_request(body: Any, max_rows: int) -> tuple[list[Any], list[Any]]:
    """``(prompts, completions)`` of a request body (TRL-style or OpenRLHF-style, see the module docstring).
    Raises :class:`RequestError`."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object with 'prompts' and 'completions' (or OpenRLHF's "
                           "'query' and 'prompts')")
    if "completions" in body:
        prompts, completions = _texts(body, "prompts"), _texts(body, "completions")
    elif "query" in body:
        queries, prompts = _texts(body, "query"), _texts(body, "prompts")
        if len(queries) != len(prompts):
            raise RequestError(f"{len(queries)} queries for {len(prompts)} prompts")
        completions = []
        for i, (q, p) in enumerate(zip(queries, prompts)):
            if not (isinstance(q, str) and isinstance(p, str) and q.startswith(p)):
                raise RequestError(f"'query'[{i}] does not start with 'prompts'[{i}]: send each query as its "
                                   "prompt followed by the response, or send 'completions'")
            completions.append(q[len(p):])
    else:
        raise RequestError("missing 'completions' (with 'prompts'), or OpenRLHF's 'query' (with 'prompts')")
    if len(prompts) != len(completions):
        raise RequestError(f"{len(prompts)} prompts for {len(completions)} completions")
    if len(prompts) > max_rows:
        raise RequestError(f"{len(prompts)} rows in one request; at most {max_rows} (send smaller batches)")
    return prompts, completions


Scorer = Callable[[Sequence[tuple[str, History, str]]], dict[str, list[float]]]  # (prompt, history, response) rows


def model_scorer(model: Any, kind: str = "z", penalty: float = 0.0) -> Scorer:
    """One version's rewards (``kind``: raw, z or sigmoid) with the std of its ensemble members, in raw units for
    ``raw``, else in z units (0 for one model). ``penalty`` (z only): ``z - penalty x std``, the uncertainty-weighted
    reward of Coste et al. over the version's own members, lower where they disagree."""
    if kind not in REWARD_KINDS:
        raise ValueError(f"reward kind must be one of {', '.join(REWARD_KINDS)}, got {kind!r}")
    if penalty and kind != "z":
        raise ValueError(f"an uncertainty penalty applies to z rewards, not {kind}")
    unit = 1.0 if kind == "raw" else float(model.norm_stats.get("std", 1.0) or 1.0)

    def score(rows: Sequence[tuple[str, History, str]]) -> dict[str, list[float]]:
        scores = model.score_rows(rows)
        std = [float(s.std) / unit for s in scores]
        return {"rewards": [float(getattr(s, kind)) - penalty * d for s, d in zip(scores, std)], "std": std}

    return score


def ensemble_scorer(ensemble: Any) -> Scorer:
    """Several versions' combined z (``VersionEnsemble``), with their disagreement as ``std``."""
    def score(rows: Sequence[tuple[str, History, str]]) -> dict[str, list[float]]:
        scores = ensemble.score_rows(rows)
        return {"rewards": [float(s.reward) for s in scores], "std": [float(s.std) for s in scores]}

    return score


class Batcher:
    """One scoring at a time; requests that arrive meanwhile wait and are scored together, up to ``max_rows`` rows:
    one forward pass per batch instead of one per request, with no added wait (on CPU, 8 clients sending 4-row
    requests get 1.4x the rows/s of one, BENCHMARKS.md). A batch that fails is scored again request by request, so
    one bad request fails alone."""

    def __init__(self, score: Callable[[list[Any], list[Any]], dict[str, list[float]]], max_rows: int) -> None:
        self.score, self.max_rows = score, max_rows
        self._queue: asyncio.Queue[tuple[list[Any], list[Any], asyncio.Future[Any]]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def submit(self, prompts: list[Any], completions: list[Any]) -> dict[str, list[float]]:
        """This request's share of the batch it was scored in (the scorer's exception if it failed alone)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._queue, self._task = asyncio.Queue(), loop.create_task(self._run())
        fut: asyncio.Future[Any] = loop.create_future()
        await self._queue.put((prompts, completions, fut))  # type: ignore[union-attr]
        return await fut

    async def _run(self) -> None:
        queue, carry = self._queue, None
        assert queue is not None
        while True:
            first = carry or await queue.get()
            batch, rows, carry = [first], len(first[0]), None
            while not queue.empty():
                item = queue.get_nowait()
                if rows + len(item[0]) > self.max_rows:
                    carry = item
                    break
                batch.append(item)
                rows += len(item[0])
            await self._score(batch)

    async def _score(self, batch: list[tuple[list[Any], list[Any], asyncio.Future[Any]]]) -> None:
        from starlette.concurrency import run_in_threadpool

        try:
            prompts = [p for b in batch for p in b[0]]
            out = await run_in_threadpool(self.score, prompts, [c for b in batch for c in b[1]])
        except Exception as exc:  # noqa: BLE001 - handed to the requests
            if len(batch) > 1:
                for one in batch:
                    await self._score([one])
            elif not batch[0][2].done():
                batch[0][2].set_exception(exc)
            return
        start = 0
        for prompts, _, fut in batch:
            if not fut.done():  # a client that went away
                fut.set_result({k: v[start:start + len(prompts)] for k, v in out.items()})
            start += len(prompts)


def build_app(scorer: Scorer, describe: dict[str, Any], cfg: ServerConfig,
              record: Callable[[list[str]], Any] | None = None) -> Any:
    """The Starlette application serving ``scorer`` (``describe``: what ``/health`` and each answer say of the
    model). ``record`` gets each request's prompt texts after scoring; its failures are logged, never the
    client's problem."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def score_and_record(prompts: list[Any], completions: list[Any]) -> dict[str, list[float]]:
        rows = completion_rows(prompts, completions)
        out = scorer(rows)
        if record is not None and rows:
            try:
                record([row[0] for row in rows])
            except Exception as exc:  # noqa: BLE001 - a full disk or a locked database must not fail the reward
                log.warning("reward server: could not record the served prompts (%s)", exc)
        return out

    batcher = Batcher(score_and_record, cfg.max_rows)

    def refused(request: Request) -> JSONResponse | None:
        if cfg.token is None:
            return None
        given = request.headers.get("authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {cfg.token}".encode()):
            return None
        return JSONResponse({"error": "missing or wrong token: send 'Authorization: Bearer <token>'"}, 401)

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": describe})

    async def score(request: Request) -> JSONResponse:
        if (denied := refused(request)) is not None:
            return denied
        body = await request.body()
        if len(body) > cfg.max_body_bytes:
            return JSONResponse({"error": f"request body of {len(body)} bytes; at most {cfg.max_body_bytes}"}, 413)
        try:
            prompts, completions = parse_request(json.loads(body or b"null"), cfg.max_rows)
            out = await batcher.submit(prompts, completions)
        except (RequestError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            return JSONResponse({"error": f"bad request: {exc}"}, 400)
        return JSONResponse({**out, "scores": out["rewards"], "model": describe})

    return Starlette(routes=[Route("/health", health, methods=["GET"]), Route("/score", score, methods=["POST"])])


def serve(app: Any, cfg: ServerConfig) -> None:
    """Serve ``app`` until interrupted (uvicorn; SIGINT and SIGTERM stop it cleanly, SIGTERM with exit code 0)."""
    import signal

    import uvicorn

    def stopped(_signum: int, _frame: Any) -> None:
        raise SystemExit(0)

    # uvicorn shuts down gracefully, then raises the signal it caught again under the handler found before it
    previous = signal.signal(signal.SIGTERM, stopped)
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
    finally:
        signal.signal(signal.SIGTERM, previous)
