"""A CPU-bound fan-out of process steps: each branch spins for `cpu_s` seconds of its process's
CPU time, so the branches together use more CPU than the run takes wall time only if they run
at once."""

import time

from statepipe import Workflow

wf = Workflow("proc_burn")


@wf.step
def branches(n: int = 4) -> list[int]:
    return list(range(int(n)))


@wf.step(map_over=branches, process=True)
def burn(item: int, cpu_s: float = 1.0) -> int:
    start = time.process_time()
    total = 0
    while time.process_time() - start < cpu_s:
        for i in range(20_000):
            total += i * i % 7
    return total


@wf.step
def count(burn: list[int]) -> int:
    return len(burn)
