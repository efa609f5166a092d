"""Which device a run uses, and how that device is written on jobs, versions and worker rows.

Every choice of device goes through :func:`resolve_device` (``auto``: CUDA when torch sees a GPU, else the CPU; a
CUDA device asked for on a machine without one is refused, never silently replaced by the CPU), and every label
through :func:`device_label`.

torch is imported only when a device must be resolved: the worker and the command line import this module at start,
and importing torch costs them about 1.7 s (``python -X importtime -c "import torch"``), which the worker pays in its
preload thread instead.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICES", "cuda_available", "device_label", "resolve_device", "torch_device"]

#: The values of ``--device`` and ``TrainConfig.device``.
DEVICES = ("auto", "cpu", "cuda")


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU (imports torch)."""
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(spec: str | None = "auto") -> str:
    """``"auto"`` (or None) -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; ``"cuda"`` or ``"cuda:N"`` refused
    with a ``RuntimeError`` on a machine without one; anything else as given (lower-cased)."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return "cuda" if cuda_available() else "cpu"
    if spec.startswith("cuda") and not cuda_available():
        raise RuntimeError(f"device {spec!r} was asked for but torch sees no CUDA device (use --device auto or cpu)")
    return spec


def torch_device(spec: str | torch.device | None = "auto", *, local_rank: int = 0) -> torch.device:
    """:func:`resolve_device` as a ``torch.device``; plain ``"cuda"`` is this process's GPU (``local_rank`` in a
    data-parallel run)."""
    import torch

    if isinstance(spec, torch.device):
        return spec
    name = resolve_device(spec)
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)


def device_label(device: str, gpus: int = 1) -> str:
    """The device as recorded on jobs, versions and worker rows: ``"cuda"``, or ``"cuda x2"`` for 2 data-parallel
    processes."""
    return f"{device} x{gpus}" if gpus > 1 else device
