"""JSONL views of the store: per-run event files, the results file, and events on stdout.

All of them are derived: each can be rebuilt from the events table, and an event file that
missed lines (its process was killed between commit and write) is backfilled on the next run."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from statepipe.client.events import TERMINAL_EVENTS
from statepipe.store.records import Event, RunRow, iso, json_text

if TYPE_CHECKING:  # annotations only: `logs` and `inspect` should not import the engine
    from statepipe.engine.runtime import Outcome
    from statepipe.store.store import Store

RESTING_EVENTS = {*TERMINAL_EVENTS, "run_paused"}  # after these this process writes no more for the run


def event_line(event: Event) -> str:
    return json_text(event.as_dict())


def _last_seq(path: Path) -> int:
    """Seq of the last complete line; a torn final line (killed mid-write) is cut off."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            tail = fh.read()
    except FileNotFoundError:
        return 0
    lines = tail.split(b"\n")
    if lines and lines[-1] != b"":
        with path.open("r+b") as fh:  # drop the torn line so the file stays valid JSONL
            fh.truncate(size - len(lines[-1]))
        lines = lines[:-1]
    for raw in reversed(lines):
        if raw.strip():
            try:
                return int(json.loads(raw)["seq"])
            except (ValueError, KeyError, TypeError):
                return 0
    return 0


class EventFiles:
    """Appends each committed event to <output_dir>/<run_id>.jsonl. A run's file is closed when
    the run comes to rest, so a worker that runs for weeks holds only its live runs' files.

    Files are plain descriptors opened for appending, and each run's lines of a batch go out in
    one write: a worker creates a file per run and writes to it a few times, and the buffered
    text layers cost more than those writes."""

    def __init__(self, output_dir: Path, store: Store) -> None:
        self.dir = output_dir
        self.store = store
        self._files: dict[str, tuple[int, int]] = {}  # run id -> (descriptor, last seq in the file)
        self._lock = threading.Lock()
        self._made_dir = False

    def _open(self, run_id: str) -> tuple[int, int]:
        if not self._made_dir:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._made_dir = True
        path = self.dir / f"{run_id}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        # a new file, the usual case, has nothing to check; one an earlier process wrote may not
        # end where the store does, or may end in a torn line
        return fd, _last_seq(path) if os.fstat(fd).st_size else 0

    def write(self, events: list[Event]) -> None:
        with self._lock:
            lines: dict[str, list[str]] = {}
            resting: set[str] = set()
            try:
                for e in events:
                    entry = self._files.get(e.run_id)
                    if entry is None:
                        entry = self._files[e.run_id] = self._open(e.run_id)
                    fd, last = entry
                    if e.seq <= last:
                        continue
                    out = lines.setdefault(e.run_id, [])
                    if e.seq > last + 1:  # lines lost by an earlier process: rebuild them from the store
                        out += [event_line(missed) + "\n" for missed in self.store.events_after(e.run_id, last, e.seq - last - 1)]
                    out.append(event_line(e) + "\n")
                    self._files[e.run_id] = (fd, e.seq)
                    if e.type in RESTING_EVENTS:
                        resting.add(e.run_id)
            finally:  # what was gathered is written even if a backfill failed: the files say so
                for run_id, out in lines.items():
                    _write_all(self._files[run_id][0], "".join(out).encode())
                for run_id in resting:  # reopened (and checked against the store) if it wakes up here
                    os.close(self._files.pop(run_id)[0])

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._files.values():
                os.close(fd)
            self._files.clear()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class StdoutEvents:
    """One JSON event per line on stdout, for `statepipe run ... | jq`. When the reader goes
    away (`| head -3`), `on_closed` is called once: nobody reads what the run does any more."""

    def __init__(self, on_closed: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._on_closed = on_closed
        self._closed = False

    def write(self, events: list[Event]) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                sys.stdout.write("".join(event_line(e) + "\n" for e in events))
                sys.stdout.flush()
            except BrokenPipeError:
                self._close()

    def _close(self) -> None:
        self._closed = True
        # what is still buffered would fail again at exit, with Python's own traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        if self._on_closed is not None:
            self._on_closed()

    def watch(self) -> None:
        """Notice a pipe's reader leaving while nothing is written (a step quiet for minutes):
        poll() reports an error on a pipe whose other end closed. Other outputs never do."""
        import select
        import stat

        fd = sys.stdout.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode) or not hasattr(select, "poll"):
            return

        def wait() -> None:
            poller = select.poll()
            poller.register(fd, 0)  # errors and hang-ups only: they are always reported
            poller.poll()
            with self._lock:
                if not self._closed:
                    self._close()

        threading.Thread(target=wait, name="statepipe-stdout-watch", daemon=True).start()


def result_line(run: RunRow, result: Any) -> str:
    """A finished run as one JSON line, as results.jsonl and `batch --jsonl` print it."""
    return json_text({
        "run_id": run.id,
        "workflow": run.workflow,
        "state": run.state,
        "input": run.input,
        "result": result,
        "error": run.error,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "duration_s": run.executing_s,
    })


class ResultWriter:
    """Runtime.finished callback: a finished run's line in results.jsonl.

    The file stays open for appending (a worker ends runs by the hundred a second), each line
    going out in one write, which keeps lines whole when several processes append; it is
    opened again if it was removed or renamed (rotated) meanwhile."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / "results.jsonl"
        self._fd: int | None = None

    def __call__(self, outcome: Outcome) -> None:
        assert outcome.run is not None
        _write_all(self._descriptor(), (result_line(outcome.run, outcome.result) + "\n").encode())

    def _descriptor(self) -> int:
        if self._fd is not None:
            try:
                current = os.path.samestat(os.fstat(self._fd), os.stat(self.path))
            except FileNotFoundError:
                current = False
            if not current:
                self.close()
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
