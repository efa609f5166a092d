"""Data-parallel fine-tuning over several processes (one per GPU), through ``torch.distributed``.

Two ways in:

* :func:`train_finetune_ddp` (what the CLI's and the worker's ``--gpus N`` call): spawns N processes on this
  machine, each runs :func:`rm_engine.finetune.train.train_finetune` as one rank (NCCL on GPUs, gloo on CPU), rank 0
  saves the model to a temporary folder and the parent loads it. Progress and cancellation cross the process
  boundary through a queue and an event.
* torchrun (one machine or several): ``torchrun ... -m cli train --inline`` starts one RM Studio process per
  GPU. Each joins the group (:func:`rm_engine.finetune.distributed.init_from_env`); rank 0 reads the labels and
  runs the usual training and publishing, handing every fine-tune it starts to the other ranks
  (:func:`lead`), which wait for those hand-offs (:func:`follow`) and never touch the database. A script of
  its own may also call ``train_finetune`` on every rank directly.

The numerics: every rank builds the same global batch plan, takes an interleaved shard, and normalises its loss
by the global batch's weight sum times the world size, so DDP's gradient average equals the gradient of one
process on the whole global batch (tested on CPU with gloo and two processes).
"""
from __future__ import annotations

import os
import queue as queue_mod
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from db.config import Settings
from rm_engine.config import Cancelled
from rm_engine.device import resolve_device, torch_device
from rm_engine.finetune.distributed import init_from_env, local_rank  # noqa: F401 - torchrun scripts call init_from_env from here
from rm_engine.finetune.train import FinetunedModel, FinetuneResult, train_finetune


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exit_with_parent(poll_s: float = 1.0) -> None:
    """A daemon thread that ends this rank when its parent dies (a killed worker must not leave ranks blocked
    in a collective)."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="rmstudio-ddp-parent-watch").start()


def _rank_main(rank: int, world: int, port: int, backend: str, args: dict[str, Any], q: Any, stop: Any, out_dir: str) -> None:
    """One spawned rank: join the group, train, rank 0 saves the model and reports its history."""
    os.environ.update({"LOCAL_RANK": str(rank), "RANK": str(rank), "WORLD_SIZE": str(world)})
    _exit_with_parent()
    threads = args.pop("threads_per_rank", None)
    if threads:
        torch.set_num_threads(int(threads))
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        progress = (lambda d: q.put(("progress", d))) if rank == 0 else None
        res = train_finetune(args["cfg"], args["train_pairs"], args["val_pairs"], weights=args["weights"],
                             device=args["device"], progress=progress, should_stop=stop.is_set,
                             settings=args["settings"], log_every=args["log_every"])
        if rank == 0:
            res.model.save(out_dir)
            q.put(("done", res.history))
        dist.barrier()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which re-raises
        q.put(("error", rank, type(exc).__name__, str(exc), traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def train_finetune_ddp(
    cfg: Any,
    train_pairs: Sequence[Any],
    val_pairs: Sequence[Any],
    *,
    gpus: int,
    weights: Sequence[float] | None = None,
    device: str | None = None,
    progress: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    settings: Settings,
    log_every: int = 20,
    threads_per_rank: int | None = None,
    timeout_s: float | None = None,
) -> Any:
    """Train with ``gpus`` data-parallel processes and return a :class:`rm_engine.finetune.train.FinetuneResult`.

    ``gpus=1`` simply calls ``train_finetune`` in this process. On a machine without CUDA (or with
    ``device="cpu"``) the ranks run on CPU with gloo, which is how the tests check the numerics. ``cfg.batch_tokens``
    is per device: the global batch holds ``gpus`` times as many tokens. ``should_stop`` is polled here and
    forwarded to the ranks, which agree on stopping at their next log interval and raise ``Cancelled``.
    """
    if gpus < 1:
        raise ValueError(f"train_finetune_ddp: gpus must be >= 1, got {gpus}")
    if gpus == 1:
        return train_finetune(cfg, train_pairs, val_pairs, weights=weights, device=device, progress=progress,
                              should_stop=should_stop, settings=settings, log_every=log_every)
    use_cuda = resolve_device(device or cfg.device).startswith("cuda")
    if use_cuda and torch.cuda.device_count() < gpus:
        raise ValueError(f"--gpus {gpus}: only {torch.cuda.device_count()} CUDA device(s) visible")
    backend = "nccl" if use_cuda else "gloo"
    ctx = torch.multiprocessing.get_context("spawn")
    q, stop = ctx.Queue(), ctx.Event()
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix=".ddp-", dir=str(settings.home) if settings.home.is_dir() else None) as tmp:
        args = {"cfg": cfg, "train_pairs": list(train_pairs), "val_pairs": list(val_pairs),
                "weights": None if weights is None else [float(w) for w in weights],
                "device": "cuda" if use_cuda else "cpu", "settings": settings, "log_every": log_every,
                "threads_per_rank": threads_per_rank}
        procs = [ctx.Process(target=_rank_main, args=(r, gpus, port, backend, dict(args), q, stop, tmp), daemon=True)
                 for r in range(gpus)]
        for p in procs:
            p.start()
        history, error = None, None
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while history is None and error is None:
                if should_stop is not None and should_stop():
                    stop.set()
                if deadline is not None and time.monotonic() > deadline:
                    error = ("parent", "TimeoutError", f"DDP training exceeded {timeout_s} s", "")
                    break
                try:
                    msg = q.get(timeout=0.2)
                except queue_mod.Empty:
                    if any(p.exitcode not in (None, 0) for p in procs):
                        dead = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode not in (None, 0)]
                        error = (dead[0][0], "ProcessError", f"rank {dead[0][0]} exited with code {dead[0][1]}", "")
                    continue
                if msg[0] == "progress" and progress is not None:
                    progress(msg[1])
                elif msg[0] == "done":
                    history = msg[1]
                elif msg[0] == "error":
                    error = msg[1:]
            for p in procs:
                p.join(timeout=60)
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join()
        if error is not None:
            rank, name, text, tb = error
            if name == "Cancelled":
                raise Cancelled(text)
            raise RuntimeError(f"DDP rank {rank} failed: {name}: {text}\n{tb}")
        model = FinetunedModel.load(tmp, device="cuda:0" if use_cuda else "cpu")
    return FinetuneResult(model=model, history=history)


def lead(cfg: Any, train_pairs: Sequence[Any], val_pairs: Sequence[Any], *, weights: Sequence[float] | None,
         device: str, progress: Callable[[dict], None] | None, should_stop: Callable[[], bool] | None,
         settings: Settings) -> FinetuneResult:
    """Rank 0 of a torchrun group: send one fine-tune's inputs to the ranks in :func:`follow`, take part in it,
    and return the trained model on this rank's device."""
    job = {"cfg": cfg, "train_pairs": list(train_pairs), "val_pairs": list(val_pairs),
           "weights": None if weights is None else [float(w) for w in weights], "device": device}
    dist.broadcast_object_list([job], src=0)
    # every rank must poll for cancellation at the same steps, so rank 0 always has a check
    res = train_finetune(cfg, train_pairs, val_pairs, weights=weights, device=device, progress=progress,
                         should_stop=should_stop or (lambda: False), settings=settings)
    res.model.to(torch_device(device, local_rank=local_rank()))
    return res


def release() -> None:
    """Rank 0, when it is done: the ranks in :func:`follow` return."""
    dist.broadcast_object_list([None], src=0)


def follow(settings: Settings) -> int:
    """A torchrun rank other than 0: take part in every fine-tune rank 0 starts (:func:`lead`) until it calls
    :func:`release`; returns how many ran. A failure on rank 0 ends the launch (torchrun stops every rank)."""
    n = 0
    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            return n
        job = box[0]
        train_finetune(job["cfg"], job["train_pairs"], job["val_pairs"], weights=job["weights"], device=job["device"],
                       should_stop=lambda: False, settings=settings)
        n += 1
