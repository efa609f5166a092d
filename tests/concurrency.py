"""Run one function in several threads at once, for the tests of concurrent writers."""
from __future__ import annotations

import threading
from collections.abc import Callable


def run_in_threads(fn: Callable[[int], None], n: int) -> list[BaseException]:
    """Call ``fn(0)`` .. ``fn(n - 1)`` in ``n`` threads released together; the exceptions they raised."""
    barrier, errors = threading.Barrier(n), []

    def run(i: int) -> None:
        try:
            barrier.wait()
            fn(i)
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
