"""Where a training step's device time goes: kernel time by kind, from ``torch.profiler`` (``bench/gpu_train.py``'s
``p3_profile_c3`` row).

MFU says how far a trainer is from the card's peak, not why. This answers the why for a few steady-state steps
(after compiling and the memory probe): the share of kernel time in matrix products, attention, inductor's fused
elementwise/reduction kernels, the optimizer and copies, the top kernels by name, and how busy the device was over
those steps (kernel time / wall time: well under 1 means the host, not the GPU, sets the pace).

    with StepProfiler(cuda=True) as sp:          # steps are marked by sp.step(), e.g. as train_finetune's should_stop
        train(..., should_stop=sp.should_stop)
    sp.report()                                  # {"device_busy_share", "categories": {...}, "top_kernels": [...]}
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

# First match wins; names as CUDA kernels are called by cuBLAS/CUTLASS, flash/flex attention, inductor and torch.
# CPU operator names (aten::mm, aten::mul, ...) are matched too, for --smoke runs on a CPU.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("attention", r"flash|fmha|flex|attention|attn"),
    ("matmul", r"gemm|cutlass|xmma|nvjet|cublas|wgmma|s16816|s1688|splitk|sm90_|sm80_|aten::(mm|addmm|bmm|matmul)$"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("inductor template", r"^triton_tem"),
    ("inductor fused", r"^triton_"),
    ("copy/fill", r"memcpy|memset|copy|fill|cat\b|index_?put|scatter|gather|index_?select|embedding"),
    ("elementwise (eager)", r"elementwise|vectorized|reduce|norm|softmax|unrolled|"
                            r"aten::(mul|add|sub|div|where|silu|neg|exp|pow|rsqrt|mean|sum)_?$"),
)


def categorize(kernel: str) -> str:
    """The kind of one kernel, by name (``"other"`` when no pattern matches)."""
    k = kernel.lower()
    for name, pattern in CATEGORIES:
        if re.search(pattern, k):
            return name
    return "other"


def breakdown(kernels: Iterable[tuple[str, float]], window_s: float | None, top: int = 12) -> dict[str, Any]:
    """Kernel time (``(name, seconds)`` pairs, several per name allowed) by category, shares of the total, the
    ``top`` kernels, and the device's busy share of ``window_s`` (the wall time of the profiled steps)."""
    per_name: dict[str, float] = {}
    for name, secs in kernels:
        if secs > 0:
            per_name[name] = per_name.get(name, 0.0) + secs
    total = sum(per_name.values())
    cats: dict[str, float] = {}
    for name, secs in per_name.items():
        c = categorize(name)
        cats[c] = cats.get(c, 0.0) + secs
    share = (lambda s: s / total) if total else (lambda s: 0.0)
    ranked = sorted(per_name.items(), key=lambda kv: -kv[1])[:top]
    return {
        "kernel_time_s": total,
        "window_s": window_s,
        "device_busy_share": (total / window_s) if window_s else None,
        "categories": {c: {"seconds": s, "share": share(s)} for c, s in sorted(cats.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"name": n[:160], "seconds": s, "share": share(s), "category": categorize(n)} for n, s in ranked],
    }


class StepProfiler:
    """``torch.profiler`` over steps ``wait + warmup + 1 .. wait + warmup + active`` of a loop whose steps call
    :meth:`step` (or :meth:`should_stop`, which returns False, to ride on a trainer's cancellation check)."""

    def __init__(self, *, cuda: bool, wait: int = 3, warmup: int = 1, active: int = 5) -> None:
        self.cuda, self.wait, self.warmup, self.active = cuda, wait, warmup, active
        self.calls = 0
        self._t: dict[str, float] = {}
        self._prof: Any = None

    def __enter__(self) -> StepProfiler:
        from torch.profiler import ProfilerActivity, profile, schedule

        acts = [ProfilerActivity.CUDA] if self.cuda else [ProfilerActivity.CPU]
        self._prof = profile(activities=acts, schedule=schedule(wait=self.wait, warmup=self.warmup,
                                                                active=self.active, repeat=1))
        self._prof.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._prof.__exit__(*exc)

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def step(self) -> None:
        """Mark the start of a step; the active window's ends are timed with the device synchronised."""
        start, end = self.wait + self.warmup, self.wait + self.warmup + self.active
        if self.calls in (start, end):
            self._sync()  # two syncs per run, at the window's edges only
            self._t["start" if self.calls == start else "end"] = time.perf_counter()
        if self.calls:
            self._prof.step()
        self.calls += 1

    def should_stop(self) -> bool:
        self.step()
        return False

    def report(self) -> dict[str, Any]:
        """:func:`breakdown` of the profiled steps (an ``error`` when the loop ran too few steps)."""
        need = self.wait + self.warmup + self.active + 1
        if self.calls < need:
            return {"error": f"the loop ran {self.calls} steps; the profile needs {need}"}
        events = self._prof.key_averages()
        if self.cuda:
            from torch.autograd import DeviceType

            kernels = [(e.key, _device_us(e) / 1e6) for e in events if getattr(e, "device_type", None) == DeviceType.CUDA]
        else:  # CPU: operator self time stands in for kernel time (smoke runs, tests)
            kernels = [(e.key, e.self_cpu_time_total / 1e6) for e in events]
        window = self._t["end"] - self._t["start"] if {"start", "end"} <= self._t.keys() else None
        return {"steps": self.active, **breakdown(kernels, window)}


def _device_us(event: Any) -> float:
    """An event's own device time in microseconds (``self_device_time_total``; ``self_cuda_time_total`` before
    torch 2.4)."""
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, attr):
            return float(getattr(event, attr))
    return 0.0
