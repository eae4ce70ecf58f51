"""The live step tree shown by `statepipe run` / `resume` on a terminal.

It is fed committed events only, so what it shows is what the store holds."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Self

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.text import Text

from statepipe.store.records import Event, RunSnapshot
from statepipe.views.layout import ELLIPSIS, Cell, Column, Fitted, brief
from statepipe.views.style import STATE_STYLE, format_duration

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
MAX_CHILD_ROWS = 6


@dataclass
class _Row:
    name: str
    item: str | None
    state: str = "pending"
    attempt: int = 0
    began: float | None = None
    elapsed: float | None = None
    line: str = ""
    tail: str = ""  # the end of the streamed output, to show its last line
    items: int | None = None
    children: dict[str, _Row] = field(default_factory=dict)


class LiveView:
    def __init__(self, console: Console, run_id: str, workflow: str, snapshot: RunSnapshot | None = None) -> None:
        self.console = console
        self.run_id = run_id
        self.workflow = workflow
        self.run_state = "pending"
        self.began = time.monotonic()
        self.rows: dict[str, _Row] = {}
        self.notice = ""  # a line under the table: what the process is doing about a signal
        self.dry_run = False
        self._lock = threading.Lock()
        self._live = Live(self, console=console, refresh_per_second=8, transient=False)
        if snapshot is not None:
            self._seed(snapshot)

    def _seed(self, snap: RunSnapshot) -> None:
        self.run_state = snap.run.state
        self.dry_run = snap.run.dry_run
        for s in snap.steps:
            row = self._row(s.name, s.item or None)
            row.state = s.state
            row.attempt = s.attempt
            if s.started_at and s.finished_at:
                row.elapsed = (s.finished_at - s.started_at).total_seconds()
            if s.state == "succeeded" and not s.item:
                row.line = "(stored)"

    def _row(self, name: str, item: str | None) -> _Row:
        parent = self.rows.setdefault(name, _Row(name, None))
        if item is None:
            return parent
        return parent.children.setdefault(item, _Row(name, item))

    def __enter__(self) -> Self:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.refresh()
        self._live.stop()

    def update(self, events: list[Event]) -> None:
        with self._lock:
            for e in events:
                if e.run_id != self.run_id:
                    continue
                self._apply(e)

    def _apply(self, e: Event) -> None:
        if e.step is None:
            if e.type.startswith("run_") and e.type not in ("run_created", "run_interrupted"):
                self.run_state = {"run_started": "running", "run_resumed": "running"}.get(e.type, e.type[4:])
            return
        row = self._row(e.step, e.item)
        data = e.data
        if e.type == "step_started":
            row.state, row.attempt, row.began, row.elapsed = "running", e.attempt or 0, time.monotonic(), None
            if "items" in data:
                row.items = data["items"]
            row.line = row.tail = ""
        elif e.type in ("step_succeeded", "step_failed", "step_skipped", "step_retrying", "attempt_abandoned"):
            row.state = {
                "step_succeeded": "succeeded",
                "step_failed": "failed",
                "step_skipped": "skipped",
                "step_retrying": "waiting",
                "attempt_abandoned": "pending",
            }[e.type]
            if row.began is not None:
                row.elapsed = time.monotonic() - row.began
            row.began = None
            row.line = str(data.get("summary") or data.get("error") or data.get("reason") or "")
            usage = data.get("usage")
            if usage:
                cost = "simulated" if usage.get("simulated") else f"${usage.get('cost_usd', 0):.4f}"
                row.line = f"[{usage.get('total_tokens', 0)} tok {cost}] {row.line}"
        elif e.type == "step_reset":
            row.state, row.line = "pending", ""
        elif e.type == "progress":
            row.line = str(data.get("message", ""))
        elif e.type == "output":
            row.tail = (row.tail + str(data.get("text", "")))[-400:]
            lines = [ln for ln in row.tail.splitlines() if ln.strip()]
            if lines:
                row.line = lines[-1]
        elif e.type == "partial":
            row.line = brief(data.get("value"), 200)

    # -- rendering --------------------------------------------------------------------------

    def _cells(self, row: _Row, label: Text) -> list[Cell]:
        style = STATE_STYLE.get(row.state, "")
        state = Text(row.state, style=style)
        if row.state == "running":
            state = Text(f"{SPINNER[int(time.monotonic() * 10) % len(SPINNER)]} running", style=style)
        elapsed = row.elapsed if row.began is None else time.monotonic() - row.began
        line = row.line.replace("\n", " ")
        return [label, state, format_duration(elapsed), str(row.attempt or ""), lambda width: _fit_line(line, width, row.began is not None)]

    def _head(self, run_id: str) -> Text:
        return Text.assemble(
            ("run ", "dim"), (run_id, "bold"), ("  ", ""), (self.workflow, "cyan"), ("  ", ""),
            (self.run_state, STATE_STYLE.get(self.run_state, "")), ("  ", ""),
            (format_duration(time.monotonic() - self.began), "dim"),
            ("  [simulated model: --dry-run]" if self.dry_run else "", "bold magenta"),
        )

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """Narrow, the output column gives way first, then the run id shortens to 8 characters
        (its whole form is on stderr); the step, state, time and attempt columns stay."""
        with self._lock:
            table = Fitted(
                Column("step", style="bold"), Column("state"), Column("time", justify="right"), Column("att", justify="right"),
                Column("output", flex=True, drop=1),
            )
            for row in self.rows.values():
                label = Text(row.name)
                if row.children or row.items is not None:
                    done = sum(1 for c in row.children.values() if c.state == "succeeded")
                    label.append(f" {done}/{row.items if row.items is not None else len(row.children)}", style="cyan")
                table.add_row(*self._cells(row, label))
                shown = [c for c in row.children.values() if c.state in ("running", "waiting", "failed")]
                for child in shown[:MAX_CHILD_ROWS]:
                    table.add_row(*self._cells(child, Text(f"  └ {child.item}")))
                if len(shown) > MAX_CHILD_ROWS:
                    table.add_row(Text(f"  … {len(shown) - MAX_CHILD_ROWS} more", style="dim"), "", "", "", "")
            head = self._head(self.run_id)
            if head.cell_len > options.max_width:
                head = self._head(self.run_id[:8])
            yield head
            yield table
            if self.notice:
                yield Text(self.notice, style="magenta")


def _fit_line(line: str, width: int, streaming: bool) -> Text:
    """A running step's line shows its end (what just arrived), a finished one's its start; cut
    at a word's end where one is near."""
    if cell_len(line) > width:
        if streaming:
            tail = line[-(width - 1):]
            space = tail.find(" ")
            line = ELLIPSIS + (tail[space + 1:] if 0 <= space < width // 2 else tail)
        else:
            head = line[: width - 1]
            space = head.rfind(" ")
            line = (head[:space] if space > width // 2 else head).rstrip(" ,:") + ELLIPSIS
    return Text(line, style="dim")
