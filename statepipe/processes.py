"""Process liveness, shared by the embedded-server check, lease takeover and the `interrupted`
state: an owner id says where its process lives, so a dead owner on this machine is recognised
at once instead of after its lease runs out."""

from __future__ import annotations

import os
import socket
import uuid


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


def new_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def owner_is_dead(owner: str | None) -> bool:
    """True only when the owner provably is gone: same host, and its pid no longer exists."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    return not pid_alive(int(pid_text))


def describe_owner(owner: str | None) -> str:
    """An owner id ("host:pid:tag") as people read it."""
    if not owner:
        return ""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    return f"pid {pid} on {host}" if pid.isdigit() else owner
