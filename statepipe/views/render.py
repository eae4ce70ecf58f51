"""Documents and tables for inspect, list, workflows and graph: one JSON shape per command, and
a rich rendering of the same data for people."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.highlighter import JSONHighlighter
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from statepipe.processes import describe_owner
from statepipe.store.records import (
    AttemptRow,
    ListPreview,
    RunRow,
    RunSnapshot,
    StepRow,
    iso,
    utcnow,
)
from statepipe.views.layout import Column, Fitted, brief, value_lines, whole
from statepipe.views.style import STATE_STYLE, format_duration, format_time

if TYPE_CHECKING:  # annotations only: `inspect` and `list` should not import the definitions
    from statepipe.definition.loader import Listed
    from statepipe.definition.workflow import Workflow
    from statepipe.store.store import RunReader

# children of one fan-out listed by inspect without --full (all that did not succeed, always); at
# most half of records.FANOUT_HEAD, so that a snapshot's head holds the ones that succeeded
FANOUT_ROWS = 10
# lines inspect gives a value without --full: about one screen for a run of a few steps
INPUT_LINES = 8
RESULT_LINES = 16
OUTPUT_LINES = 6
TRACEBACK_LINES = 12


def _duration(s: StepRow) -> float | None:
    if s.started_at and s.finished_at:
        return (s.finished_at - s.started_at).total_seconds()
    return None


def step_json(snap: RunSnapshot, s: StepRow) -> dict[str, Any]:
    return step_document(s, snap.output_of(s))


def step_document(s: StepRow, output: Any) -> dict[str, Any]:
    return {
        "name": s.name,
        "item": s.item or None,
        "state": s.state,
        "depends_on": s.depends_on,
        "attempt": s.attempt,
        "output": output,
        "error": s.error,
        "started_at": iso(s.started_at),
        "finished_at": iso(s.finished_at),
        "duration_s": _duration(s),
        "next_attempt_at": iso(s.next_attempt_at),
        "waiting_for": s.waiting_for,
        "attempts": [a.as_json() for a in s.with_current()],
    }


def inspect_json(snap: RunSnapshot, forks: list[str]) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for parent in snap.parents():
        steps.append(step_json(snap, parent))
        steps.extend(step_json(snap, c) for c in snap.children(parent.name))
    steps.extend(step_json(snap, c) for c in snap.compensations())
    return _inspect_document(snap.run.as_json(snap.result()), steps, forks, snap.child_runs)


def inspect_streamed(reader: RunReader) -> dict[str, Any]:
    """inspect_json's document, its steps (and a fan-out's outputs) iterators that read the
    store as jsondoc.write_json writes them."""
    return _inspect_document(
        reader.run.as_json(reader.result()), (step_document(s, reader.output_of(s)) for s in reader.steps()), reader.forks(),
        reader.child_runs(),
    )


def _inspect_document(
    run: dict[str, Any], steps: Iterable[dict[str, Any]], forks: list[str], children: list[RunRow]
) -> dict[str, Any]:
    """The one shape of `inspect --json`: `child_runs` are the runs its steps started."""
    child_runs = [{"id": c.id, "key": c.parent_key, "workflow": c.workflow, "state": c.shown_state} for c in children]
    return {"run": run, "steps": steps, "forks": forks, "child_runs": child_runs}


def _shown(value: Any) -> Any:
    """JSON's fallback for what a snapshot for people holds beside JSON values: a list preview
    inside a value (a fan-out's big outputs) shows its head and what is left out."""
    if isinstance(value, ListPreview):
        return [*value.head, f"… {value.length - len(value.head):,} more items"]
    return str(value)


_COMPACT = json.JSONEncoder(ensure_ascii=False, default=_shown).encode
_INDENTED = json.JSONEncoder(indent=2, ensure_ascii=False, default=_shown)


def _pretty(value: Any) -> str:
    """A whole value as --full shows it: text as itself, JSON compact when it fits a line and
    indented otherwise."""
    if isinstance(value, str):
        return value
    compact = _COMPACT(value)
    return compact if len(compact) <= 76 else _INDENTED.encode(value)


# Colours by rich's regex highlighter: a lexer (rich.syntax, with pygments) cost inspect a tenth
# of its time in imports and rendering.
_HIGHLIGHT = JSONHighlighter()


def _value(value: Any, width: int, limit: int, full: bool) -> list[RenderableType]:
    """A value in `width` cells: whole with `full`, else in at most `limit` lines cut by its
    structure (layout.value_lines), ending with a line that says what was left out."""
    if full:
        return [_HIGHLIGHT(Text(_pretty(value)))]
    lines, left_out = value_lines(value, width, limit)
    shown: list[RenderableType] = [_HIGHLIGHT(Text(line, no_wrap=True, overflow="ellipsis")) for line in lines]
    if left_out:
        shown.append(Text(f"… ({left_out}; --full shows all)", style="dim"))
    return shown


def interrupted_note(run: RunRow) -> str:
    """What an interrupted run's reader needs: since when nobody executes it, and the way on."""
    since = run.stopped_at
    ago = f" {format_duration((utcnow() - since).total_seconds())} ago" if since else ""
    return f"owner stopped{ago} · continue: statepipe resume {run.id[:8]}"


def _state(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, ""))


def inspect_view(snap: RunSnapshot, forks: list[str], full: bool = False) -> RenderableType:
    run = snap.run
    head = Table.grid(padding=(0, 2))
    head.add_column(style="dim")
    head.add_column()
    head.add_row("run", Text(run.id, style="bold"))
    head.add_row("workflow", run.workflow)
    head.add_row("state", _state(run.shown_state))
    if run.interrupted:
        head.add_row("", Text(interrupted_note(run), style="yellow"))
    head.add_row("created", format_time(run.created_at))
    head.add_row("started", format_time(run.started_at))
    head.add_row("finished", format_time(run.finished_at))
    head.add_row("duration", f"{format_duration(run.executing_s)} executing · {format_duration(run.age_s)} since created")
    head.add_row("steps", f"{run.steps_done}/{run.steps_total} done")
    if run.tokens is not None:
        head.add_row("llm", f"{run.tokens} tokens · {format_cost(run.cost_usd, run.dry_run)}" + (" (simulated model: --dry-run)" if run.dry_run else ""))
    if run.owner:
        head.add_row("owner", run.owner)
    if run.forked_from:
        head.add_row("forked from", run.forked_from)
    if run.parent_run:
        head.add_row("parent", f"{run.parent_run} ({run.parent_key})")
    for c in snap.child_runs:
        head.add_row("child", Text.assemble(f"{c.id[:8]} {c.parent_key} ", _state(c.shown_state)))
    if forks:
        head.add_row("forks", ", ".join(forks))
    if run.error:
        head.add_row("error", Text(run.error, style="red"))
    return Group(Panel(head, title="run", title_align="left"), _Details(snap, full))


class _Details:
    """Inspect under the run's panel, laid out for the console's width: the input, the result,
    a table of steps with one line each, and under it a block for each step with more to show
    than its line holds (an output too long for it, attempts that failed, feedback). The result
    is shown once: its steps' lines point to it."""

    def __init__(self, snap: RunSnapshot, full: bool) -> None:
        self.snap = snap
        self.full = full
        self.results = _result_steps(snap)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        yield self._panel("input", self.snap.run.input, width, INPUT_LINES)
        if self.snap.run.state == "succeeded":
            yield self._panel("result", self.snap.result(), width, RESULT_LINES)
        table, rows = self._table()
        room = table.widths(width)[-1]  # of the output column; None: given up
        yield table
        blocks = [block for s in rows if (block := self._block(s, room, width - 2))]
        if blocks:
            yield Text()
        for heading, body in blocks:
            yield heading
            yield Padding(Group(*body), (0, 0, 0, 2))

    def _panel(self, title: str, value: Any, width: int, limit: int) -> Panel:
        return Panel(Group(*_value(value, width - 4, limit, self.full)), title=title, title_align="left")

    def _table(self) -> tuple[Fitted, list[StepRow]]:
        snap = self.snap
        # children not read (RunSnapshot.widths) may have used a model: the run's sum says so
        usage = snap.run.tokens is not None or any(a.usage for s in snap.steps for a in s.attempts)
        table = Fitted(
            Column("step"), Column("state"), Column("att", justify="right"), Column("time", justify="right"),
            Column("started", drop=1), *([Column("llm", drop=3)] if usage else []), Column("output", flex=True, drop=2),
            title="steps", easy=32,
        )
        rows: list[StepRow] = []
        for parent in [*snap.parents(), *snap.compensations()]:
            children = snap.children(parent.name)
            width = snap.width(parent.name)
            shown = children if self.full else _some_children(children, width)
            for s in [parent, *shown]:
                table.add_row(
                    _label(s), _state(s.state), str(len(s.with_current()) or ""),
                    format_duration(_duration(s)), format_time(s.started_at), *([_usage_cell(s)] if usage else []),
                    lambda w, s=s: self._output_cell(s, w),  # type: ignore[misc]
                )
                rows.append(s)
            if len(shown) < width:
                left = width - len(shown)
                table.add_row(f"  └ … {left:,} more", _state("succeeded"), "", "", "", *([""] if usage else []),
                              Text("--full shows all", style="dim"))
        return table, rows

    def _output_cell(self, s: StepRow, width: int) -> Text:
        if s.state != "succeeded":
            return Text((s.error or "").partition("\n")[0], style="red")
        if not s.item and s.name in self.results:
            return Text("the result, above", style="dim")
        return Text(brief(self.snap.output_of(s), width), style="dim")

    def _block(self, s: StepRow, room: int | None, width: int) -> tuple[Text, list[RenderableType]] | None:
        """The heading and lines of a step's block; None when its table line says it all."""
        body = [*self._history(s, width)]
        if s.feedback:
            body.append(Text.assemble(("feedback  ", "dim"), s.feedback))
        if s.overrides:
            body.append(Text.assemble(("input set  ", "dim"), brief(s.overrides, max(width - 11, 8))))
        heading = Text(f"{s.name} · {s.item}" if s.item else s.name, style="bold")
        value = self.snap.output_of(s)
        if s.state == "succeeded" and not s.item and s.name not in self.results and (room is None or whole(value, room) is None):
            one = whole(value, width - heading.cell_len - 2)
            if one is not None and not body:  # a short value beside its step's name
                return heading.append("  ").append_text(_HIGHLIGHT(Text(one))), []
            if whole(value, width) is None:
                heading.append(f"  {_shape(value)}", style="dim")
            body.extend(_value(value, width, OUTPUT_LINES, self.full))
        return (heading, body) if body else None

    def _history(self, s: StepRow, width: int) -> list[RenderableType]:
        """Its attempts when there is more to them than one that succeeded: each with its error,
        the latest failed one with its traceback (all of them with --full)."""
        attempts = s.with_current()
        if len(attempts) <= 1 and all(a.state in ("succeeded", "running") and not a.cached_from for a in attempts):
            return [Text(s.error, style="red")] if s.error and s.state != "succeeded" else []
        traced = [a for a in attempts if getattr(a, "traceback", None)]
        # which process ran each, once they were several (a distributed child's worker died, say)
        where = len({a.worker for a in attempts if a.worker}) > 1
        heads = [
            Text.assemble(f"#{a.number} ", _state(a.state), _cached_note(a), f"  {_took(a)}" if a.finished_at else "",
                          (f"  {describe_owner(a.worker)}", "dim") if where and a.worker else "")
            for a in attempts
        ]
        indent = max((h.cell_len for a, h in zip(attempts, heads) if a.error), default=0)
        lines: list[RenderableType] = []
        for a, head in zip(attempts, heads):
            if a.error:  # wrapped under itself, beside its attempt
                row = Table.grid(padding=(0, 2))
                row.add_column(width=indent, no_wrap=True)
                row.add_column()
                row.add_row(head, Text(a.error, style="red"))
                lines.append(row)
            else:
                lines.append(head)
            tb = getattr(a, "traceback", None)
            if tb and (self.full or a is traced[-1]):
                lines.append(Padding(_traceback(tb, self.full), (0, 0, 0, 4)))
        if s.error and s.state != "succeeded" and all(s.error != a.error for a in attempts):
            lines.append(Text(s.error, style="red"))
        return lines


def _took(a: AttemptRow) -> str:
    return format_duration((a.finished_at - a.started_at).total_seconds() if a.finished_at else None)


def _traceback(text: str, full: bool) -> Text:
    """A stored traceback, dimmed so the error above it reads first; its first lines (the user's
    frames come first) unless `full`."""
    lines = text.rstrip("\n").splitlines()
    if full or len(lines) <= TRACEBACK_LINES:
        return Text("\n".join(lines), style="dim")
    shown = "\n".join(lines[: TRACEBACK_LINES - 1])
    return Text(f"{shown}\n… ({len(lines) - TRACEBACK_LINES + 1} more lines; --full shows all)", style="dim")


def _shape(value: Any) -> str:
    """What a value is, for the heading of a block that shows it cut."""
    if isinstance(value, dict):
        return f"{{{len(value):,} keys}}"
    if isinstance(value, ListPreview):
        return f"[{value.length} items]"
    if isinstance(value, (list, tuple)):
        return f"[{len(value)} items]"
    if isinstance(value, str):
        return f"{len(value):,} characters"
    return ""


def _label(s: StepRow) -> str:
    """A fan-out child under its parent's line; a compensation's child, which follows no such
    line, with its name."""
    if not s.item:
        return s.name
    return f"  └ {s.item}" if s.compensates is None else f"{s.name} · {s.item}"


def _result_steps(snap: RunSnapshot) -> set[str]:
    """The steps whose outputs make the result, by the rule of RunSnapshot.result."""
    if snap.run.state != "succeeded":
        return set()
    parents = snap.parents()
    if snap.run.result_step:
        return {snap.run.result_step}
    needed = {d for s in parents for d in s.depends_on}
    return {s.name for s in parents if s.name not in needed}


def _some_children(children: list[StepRow], width: int | None = None) -> list[StepRow]:
    """A fan-out's children as inspect lists them without --full: every one that did not succeed,
    and the first few that did, in item order; the rest, all succeeded, are counted in one row
    (unless that row would stand for a single child: then it is listed instead). `children`
    may be some of the fan-out's `width` (Store.snapshot's `some_children`): every one that did
    not succeed and the first FANOUT_HEAD, which hold the first FANOUT_ROWS that did."""
    width = len(children) if width is None else width
    room = FANOUT_ROWS - sum(c.state != "succeeded" for c in children)
    shown: list[StepRow] = []
    for c in children:
        if c.state != "succeeded":
            shown.append(c)
        elif room > 0:
            shown.append(c)
            room -= 1
    return shown if width - len(shown) > 1 else children


def _cached_note(a: AttemptRow) -> str:
    """Where a reused output came from (the cache, or the run forked from)."""
    if not a.cached_from:
        return ""
    return f" (from {a.cached_from['run_id'][:8]} {a.cached_from['step']} #{a.cached_from['number']})"


def format_cost(cost: float | None, simulated: bool = False) -> str:
    if simulated:
        return "simulated"
    if cost is None:
        return ""
    return f"${cost:.4f}" if cost < 1 else f"${cost:.2f}"


def _usage_cell(s: StepRow) -> str:
    """Tokens and cost over every attempt of the step (failed ones cost money too)."""
    usages = [a.usage for a in s.attempts if a.usage]
    if not usages:
        return ""
    tokens = sum(int(u.get("total_tokens") or 0) for u in usages)
    simulated = any(u.get("simulated") for u in usages)
    truncated = " truncated" if any(c.get("truncated") for c in usages[-1].get("details") or []) else ""  # the latest attempt's reply
    return f"{tokens} tok {format_cost(sum(float(u.get('cost_usd') or 0) for u in usages), simulated)}{truncated}"


def list_table(runs: list[RunRow]) -> Fitted:
    """Narrow, a workflow's name is cut, then a cost column goes (it goes when empty anyway),
    then the start time; the id, the state and the time are kept."""
    table = Fitted(
        Column("id"), Column("workflow", flex=True), Column("state"), Column("started", drop=2), Column("duration"),
        Column("steps"), Column("cost", justify="right", drop=1), easy=12,
    )
    for r in runs:
        table.add_row(
            r.id[:8], r.workflow, _state(r.shown_state), format_time(r.started_at or r.created_at),
            format_duration(r.executing_s), f"{r.steps_done}/{r.steps_total}", format_cost(r.cost_usd, r.dry_run and r.tokens is not None),
        )
    return table


def workflows_table(found: list[Listed]) -> Table:
    table = Table(expand=False)
    for col in ("workflow", "steps", "description", "file"):
        table.add_column(col)
    for w in found:
        desc = Text(w.error, style="red") if w.error else Text(w.description)
        table.add_row(w.name, str(w.steps) if not w.error else "-", desc, _near(w.ref.rsplit(":", 1)[0]))
    return table


def _near(path: str) -> str:
    """A path relative to the current directory when it is below it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def graph_text(wf: Workflow) -> str:
    lines = [f"{wf.name}"]
    for s in wf.steps:
        deps = f"  <- {', '.join(s.depends_on)}" if s.depends_on else ""
        fan = f"  [one per item of {s.map_over}]" if s.map_over else ""
        lines.append(f"  {s.name}{deps}{fan}")
    return "\n".join(lines)


def graph_mermaid(wf: Workflow) -> str:
    lines = ["graph TD"]
    for s in wf.steps:
        shape = f'{s.name}[["{s.name} (each item)"]]' if s.map_over else f'{s.name}["{s.name}"]'
        lines.append(f"  {shape}")
    for s in wf.steps:
        for d in s.depends_on:
            lines.append(f"  {d} --> {s.name}")
    return "\n".join(lines)

