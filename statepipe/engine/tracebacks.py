"""A failed attempt's traceback, as the step's author needs it: their own frames (file and line
of their code, and the libraries it called), with statepipe's frames and the event loop's and
thread pool's plumbing between them left out, bounded in size so a deep recursion cannot bloat
the attempt's row. Stored with the attempt; `where` is the short form its events carry."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import traceback
from pathlib import Path

import statepipe

MAX_FRAMES = 30  # the innermost ones: where it failed
MAX_CHARS = 8000
_HIDDEN = tuple(
    str(Path(p).resolve().parent) + os.sep
    for p in (statepipe.__file__, asyncio.__file__, concurrent.futures.__file__)
) + (str(Path(threading.__file__).resolve()),)


def _hidden(filename: str) -> bool:
    try:
        return str(Path(filename).resolve()).startswith(_HIDDEN)
    except OSError:
        return False


def _shown_path(filename: str) -> str:
    """Relative to the working directory when under it: the path the user typed."""
    try:
        return os.path.relpath(filename) if Path(filename).resolve().is_relative_to(Path.cwd()) else filename
    except (OSError, ValueError):
        return filename


_CARRIED = "_statepipe_traceback"  # (traceback, where) of an error raised in another process


def carry(error: BaseException, trace: str | None, at: str | None) -> None:
    """Give an error rebuilt from another process (a process step's) the traceback and place it
    had there: its own frames stayed behind."""
    setattr(error, _CARRIED, (trace, at))


def _frames(error: BaseException) -> list[traceback.FrameSummary]:
    return [f for f in traceback.extract_tb(error.__traceback__) if not _hidden(f.filename)]


def error_text(error: BaseException, plain: bool = False) -> str:
    """`Type: message` of an exception (`message` alone when `plain`), even when its str() fails
    (a __str__ that raises, an integer past Python's 4300 digits): a step's error must never
    crash the engine that records it."""
    try:
        text = str(error)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's __str__ is reported, not raised
        text = f"<its message could not be made text: {type(exc).__name__}>"
    return text if plain else f"{type(error).__name__}: {text}"


def user_traceback(error: BaseException) -> str | None:
    """The traceback of `error` (and of the exceptions it was raised from) without statepipe's
    frames; None when no frame is the user's (statepipe raised it: a timeout, say)."""
    carried = getattr(error, _CARRIED, None)
    if carried is not None:
        return carried[0]
    if not _frames(error):
        return None
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = _frames(current)
        lines = [error_text(current)]
        if frames:
            cut = len(frames) - MAX_FRAMES
            shown = traceback.StackSummary.from_list(
                [traceback.FrameSummary(_shown_path(f.filename), f.lineno, f.name, line=f.line) for f in frames[-MAX_FRAMES:]]
            )
            lines[:0] = ["Traceback (most recent call last):"]
            if cut > 0:
                lines.insert(1, f"  ... {cut} earlier frames")
            lines[-1:-1] = [chunk.rstrip("\n") for chunk in shown.format()]
        parts.insert(0, "\n".join(lines))
        cause = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
        if cause is not None:  # as Python prints a chain: the cause first
            parts.insert(0, "\nThe above exception led to the following one:\n")
        current = cause
    text = "\n".join(parts)
    return text if len(text) <= MAX_CHARS else "…" + text[-(MAX_CHARS - 1) :]


def where(error: BaseException) -> str | None:
    """`file:line in function` of the innermost user frame: the short form events carry."""
    carried = getattr(error, _CARRIED, None)
    if carried is not None:
        return carried[1]
    frames = _frames(error)
    if not frames:
        return None
    last = frames[-1]
    return f"{_shown_path(last.filename)}:{last.lineno} in {last.name}"
