"""Named points where the fault tests pause a process (to kill it with -9 exactly there). No-ops in normal use."""
from __future__ import annotations

import os
import time


def fault_point(name: str) -> None:
    """When the environment variable ``RMSTUDIO_FAULT_PAUSE`` equals ``name``, append ``"<name> <pid>"`` to the
    file named by ``RMSTUDIO_FAULT_MARKER`` and sleep (``RMSTUDIO_FAULT_SECONDS``, default an hour), so that a
    test can kill the process exactly here (``tests/integration/test_faults.py``). A no-op otherwise."""
    if os.environ.get("RMSTUDIO_FAULT_PAUSE") != name:
        return
    marker = os.environ.get("RMSTUDIO_FAULT_MARKER")
    if marker:
        with open(marker, "a", encoding="utf-8") as f:
            f.write(f"{name} {os.getpid()}\n")
    time.sleep(float(os.environ.get("RMSTUDIO_FAULT_SECONDS", "3600")))
