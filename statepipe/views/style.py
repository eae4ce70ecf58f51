"""Colours and formats shared by every terminal view."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

STATE_STYLE = {
    "pending": "dim",
    "running": "bold yellow",
    "waiting": "magenta",
    "paused": "magenta",
    "succeeded": "green",
    "failed": "bold red",
    "skipped": "dim cyan",
    "cancelled": "red",
    "abandoned": "dim red",
    "interrupted": "bold magenta",  # resumable like paused; unplanned, so it stands out
}


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_time(ts: datetime | None) -> str:
    if ts is None:
        return ""
    local = ts.astimezone()
    if datetime.now(timezone.utc) - ts < timedelta(hours=20):
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M")
