"""Process liveness, shared by the embedded-server check and lease takeover."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """A zombie (killed, not yet reaped by its parent) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True
