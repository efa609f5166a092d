"""The one device resolver and the device labels (rm_engine/device.py), with torch's view of CUDA patched."""
from __future__ import annotations

import pytest
import torch

from rm_engine.device import device_label, resolve_device, torch_device


@pytest.fixture(params=[False, True], ids=["no-gpu", "gpu"])
def has_cuda(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: request.param)
    return request.param


@pytest.mark.parametrize("spec", ["auto", None, " Auto "])
def test_auto_is_the_gpu_when_torch_sees_one(has_cuda: bool, spec: str | None) -> None:
    assert resolve_device(spec) == ("cuda" if has_cuda else "cpu")
    assert torch_device(spec) == (torch.device("cuda", 0) if has_cuda else torch.device("cpu"))


@pytest.mark.parametrize("spec", ["cuda", "cuda:1", "CUDA"])
def test_a_gpu_asked_for_is_refused_without_one_never_replaced(has_cuda: bool, spec: str) -> None:
    if has_cuda:
        assert resolve_device(spec) == spec.lower()
    else:
        with pytest.raises(RuntimeError, match=f"device '{spec.lower()}' was asked for but torch sees no CUDA device"):
            resolve_device(spec)


def test_cpu_stays_cpu_and_a_rank_gets_its_own_gpu(has_cuda: bool) -> None:
    assert resolve_device("cpu") == "cpu" and torch_device("cpu", local_rank=3) == torch.device("cpu")
    if has_cuda:
        assert torch_device("cuda", local_rank=1) == torch.device("cuda", 1)
        assert torch_device("cuda:2", local_rank=1) == torch.device("cuda", 2)
    given = torch.device("cpu")
    assert torch_device(given) is given


@pytest.mark.parametrize("device, gpus, label", [("cpu", 1, "cpu"), ("cuda", 1, "cuda"), ("cuda", 2, "cuda x2"),
                                                  ("cpu", 4, "cpu x4")])
def test_device_label(device: str, gpus: int, label: str) -> None:
    assert device_label(device, gpus) == label
