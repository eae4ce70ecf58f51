"""For bench/serve_events.py: `steps` steps in a chain, each sleeping `gap` seconds, so its
transitions (committed at once, never grouped) reach the server at a steady pace."""

import time

from statepipe import Workflow

wf = Workflow("ticker")


def _tick(gap: float) -> int:
    time.sleep(gap)
    return 1


for _n in range(40):
    wf.step(name=f"t{_n:02d}", after=[f"t{_n - 1:02d}"] if _n else [])(lambda gap=0.05: _tick(gap))
