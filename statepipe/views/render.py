"""Documents and tables for inspect, list, workflows and graph: one JSON shape per command, and
a rich rendering of the same data for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.highlighter import JSONHighlighter
from rich.table import Table
from rich.text import Text

from statepipe.engine.outputs import summarize
from statepipe.store.records import AttemptRow, ListPreview, RunRow, RunSnapshot, StepRow, iso
from statepipe.views.style import STATE_STYLE, format_duration, format_time

if TYPE_CHECKING:  # annotations only: `inspect` and `list` should not import the definitions
    from statepipe.definition.loader import Listed
    from statepipe.definition.workflow import Workflow

TRUNCATE_CHARS = 1200
FANOUT_ROWS = 10  # children of one fan-out listed by inspect without --full (all that did not succeed, always)


def _duration(s: StepRow) -> float | None:
    if s.started_at and s.finished_at:
        return (s.finished_at - s.started_at).total_seconds()
    return None


def step_json(snap: RunSnapshot, s: StepRow) -> dict[str, Any]:
    return {
        "name": s.name,
        "item": s.item or None,
        "state": s.state,
        "depends_on": s.depends_on,
        "attempt": s.attempt,
        "output": snap.output_of(s),
        "error": s.error,
        "started_at": iso(s.started_at),
        "finished_at": iso(s.finished_at),
        "duration_s": _duration(s),
        "next_attempt_at": iso(s.next_attempt_at),
        "attempts": [a.as_json() for a in s.with_current()],
    }


def inspect_json(snap: RunSnapshot, forks: list[str]) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for parent in snap.parents():
        steps.append(step_json(snap, parent))
        steps.extend(step_json(snap, c) for c in snap.children(parent.name))
    steps.extend(step_json(snap, c) for c in snap.compensations())
    return {"run": snap.run.as_json(snap.result()), "steps": steps, "forks": forks}


def _shown(value: Any) -> Any:
    """JSON's fallback for what a snapshot for people holds beside JSON values: a list preview
    inside a value (a fan-out's big outputs) shows its head and what is left out."""
    if isinstance(value, ListPreview):
        return [*value.head, f"… {value.length - len(value.head):,} more items"]
    return str(value)


_COMPACT = json.JSONEncoder(ensure_ascii=False, default=_shown).encode
_INDENTED = json.JSONEncoder(indent=2, ensure_ascii=False, default=_shown)


def _pretty(value: Any, full: bool) -> str:
    """Compact when it fits a line, indented otherwise; long values cut unless `full`. Indenting
    is pure Python in the json module (about 0.2 s a megabyte), so a cut value is indented only
    as far as it is shown."""
    if isinstance(value, ListPreview):  # only its head was read (Store.snapshot(preview=True))
        head = _INDENTED.encode(value.head)[:TRUNCATE_CHARS].removesuffix("\n]")
        return f"{head}\n… (a list of {value.length:,} items; --full shows all)"
    compact = _COMPACT(value)
    if len(compact) <= 76:
        return compact
    if full:
        return _INDENTED.encode(value)
    shown: list[str] = []
    size = 0
    for chunk in _INDENTED.iterencode(value):
        shown.append(chunk)
        size += len(chunk)
        if size > TRUNCATE_CHARS:
            return "".join(shown)[:TRUNCATE_CHARS] + f"\n… (the whole value is {len(compact):,} characters of JSON; --full shows all)"
    return "".join(shown)


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
    if forks:
        head.add_row("forks", ", ".join(forks))
    if run.error:
        head.add_row("error", Text(run.error, style="red"))
    sections: list[RenderableType] = [Panel(head, title="run", title_align="left"), Panel(_json(run.input, full), title="input", title_align="left")]
    if run.state == "succeeded":
        sections.append(Panel(_json(snap.result(), full), title="result", title_align="left"))

    table = Table(title="steps", title_justify="left", expand=False)
    for col in ("step", "state", "attempts", "started", "duration", "llm", "output / error"):
        table.add_column(col, overflow="fold")
    for parent in [*snap.parents(), *snap.compensations()]:
        children = snap.children(parent.name)
        shown = children if full else _some_children(children)
        for s in [parent, *shown]:
            label = f"  └ {s.item}" if s.item else s.name
            value = snap.output_of(s)
            brief = f"[{value.length} items]" if isinstance(value, ListPreview) else summarize(value)
            # an error is read whole; an output's summary stays on one line
            summary = Text(s.error, style="red") if s.error else Text(brief if s.state == "succeeded" else "", style="dim", no_wrap=True, overflow="ellipsis")
            attempts = ", ".join(_attempt_cell(a) for a in s.with_current()) or "-"
            table.add_row(label, _state(s.state), attempts, format_time(s.started_at), format_duration(_duration(s)), _usage_cell(s), summary)
        if len(shown) < len(children):
            left = len(children) - len(shown)
            table.add_row("  └ …", _state("succeeded"), f"{left:,} more", "", "", "", Text("--full shows all", style="dim"))

    outputs: list[RenderableType] = []
    for parent in snap.parents():
        value = snap.output_of(parent)
        if parent.state == "succeeded":
            outputs.append(Panel(_json(value, full), title=parent.name, title_align="left"))
    return Group(*sections, table, *outputs)


def _some_children(children: list[StepRow]) -> list[StepRow]:
    """A fan-out's children as inspect lists them without --full: every one that did not succeed,
    and the first few that did, in item order; the rest, all succeeded, are counted in one row
    (unless that row would stand for a single child: then it is listed instead)."""
    room = FANOUT_ROWS - sum(c.state != "succeeded" for c in children)
    shown: list[StepRow] = []
    for c in children:
        if c.state != "succeeded":
            shown.append(c)
        elif room > 0:
            shown.append(c)
            room -= 1
    return shown if len(children) - len(shown) > 1 else children


def _attempt_cell(a: AttemptRow) -> str:
    """`#1 succeeded`, and where a reused output came from (the cache, or the run forked from)."""
    text = f"#{a.number} {a.state}"
    if a.cached_from:
        text += f" (from {a.cached_from['run_id'][:8]} {a.cached_from['step']} #{a.cached_from['number']})"
    return text


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


def list_table(runs: list[RunRow]) -> Table:
    table = Table(expand=False)
    for col in ("id", "workflow", "state", "started", "duration", "steps", "cost"):
        table.add_column(col, no_wrap=True, justify="right" if col == "cost" else "left")
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

