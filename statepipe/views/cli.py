"""The `statepipe` command. Every failure a user can cause is a StatepipeError, printed as one
line on stderr with its exit code (README: "Exit codes"); tracebacks only with --verbose."""

from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from statepipe import config
from statepipe.errors import (
    EXIT_INTERRUPTED,
    EXIT_RUN_CANCELLED,
    EXIT_RUN_FAILED,
    ConflictError,
    InputError,
    StatepipeError,
)
from statepipe.inputs import json_object, json_or_text, read_text

app = typer.Typer(
    name="statepipe",
    help="Run long AI workflows that survive anything: watch, resume, inspect.",
    no_args_is_help=True,
    add_completion=False,  # `statepipe completion` instead: a shell named, not guessed
    suggest_commands=False,  # main() suggests, once
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Manage the embedded PostgreSQL.", no_args_is_help=True)
app.add_typer(db_app, name="db")

OUTCOME_EXIT = {
    "succeeded": 0,
    "paused": 0,
    "waiting": 0,  # resting until a person sends a value: not a failure
    "failed": EXIT_RUN_FAILED,
    "cancelled": EXIT_RUN_CANCELLED,
    "interrupted": EXIT_INTERRUPTED,
}


@dataclass
class Options:
    database_url: str | None = None
    output_dir: str | None = None
    verbose: bool = False


OPTS = Options()

err = Console(stderr=True, highlight=False, soft_wrap=True)


def out_console() -> Console:
    return Console(highlight=False)


GLOBAL_HELP = {
    "database_url": "PostgreSQL URL (default: STATEPIPE_DATABASE_URL, else the embedded server).",
    "output_dir": "Where JSONL files go (default: STATEPIPE_OUTPUT_DIR, else the folder the run was started with, else ./output).",
    "verbose": "Show tracebacks.",
}


def _print_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("statepipe")
    except PackageNotFoundError:  # a source checkout on PYTHONPATH, not installed
        from statepipe import __version__ as number
    typer.echo(f"statepipe {number}")
    raise typer.Exit()


@app.callback()
def _global(
    database_url: Annotated[str | None, typer.Option("--database-url", help=GLOBAL_HELP["database_url"], show_default=False)] = None,
    output_dir: Annotated[str | None, typer.Option("--output-dir", help=GLOBAL_HELP["output_dir"], show_default=False)] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=GLOBAL_HELP["verbose"])] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    OPTS.database_url, OPTS.output_dir, OPTS.verbose = database_url, output_dir, verbose


def _late_globals() -> list[Any]:
    """The global options again on every command, so they may follow it too
    (`statepipe inspect RUN -v`); given there, they win over the same option before it."""
    from typer.core import TyperOption

    def keep(field: str) -> Any:
        def store(_ctx: Any, _param: Any, value: Any) -> None:
            if value:
                setattr(OPTS, field, value)

        return store

    return [
        TyperOption(param_decls=["--database-url"], help=GLOBAL_HELP["database_url"], callback=keep("database_url"),
                    expose_value=False, rich_help_panel="Global options"),
        TyperOption(param_decls=["--output-dir"], help=GLOBAL_HELP["output_dir"], callback=keep("output_dir"),
                    expose_value=False, rich_help_panel="Global options"),
        TyperOption(param_decls=["--verbose", "-v"], is_flag=True, default=False, help=GLOBAL_HELP["verbose"],
                    callback=keep("verbose"), expose_value=False, rich_help_panel="Global options"),
    ]


def _store(max_size: int = 4) -> Any:
    from statepipe.store.database import open_store

    return open_store(config.database_url(OPTS.database_url), max_size=max_size)


def _output_dir(store: Any, run_id: str | None) -> Path:
    from statepipe.client.api import output_dir_of

    return output_dir_of(store, run_id, OPTS.output_dir)


def _emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


# -- input ------------------------------------------------------------------------------------


def parse_inputs(pairs: list[str], input_file: str | None) -> dict[str, Any]:
    """`--input-file` (a path, or - for stdin) gives a JSON object; each `-i key=value` sets one
    key, its value read as JSON when it parses (3, true, [1,2]) and as a string otherwise."""
    data: dict[str, Any] = {}
    if input_file is not None:
        source = "stdin" if input_file == "-" else f"input file {input_file}"
        data.update(json_object(read_text(input_file, source), source))
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip() or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key.strip()):
            raise InputError(f"invalid -i {pair!r}: expected key=value")
        data[key.strip()] = json_or_text(raw, f"-i {key.strip()}")
    return data


# -- executing --------------------------------------------------------------------------------


def _drain_on_signals(runtime: Any, grace: float, what: str, say: Any = None, last_words: Any = None) -> None:
    """First SIGINT/SIGTERM: start nothing new, give running steps `grace` seconds, then
    interrupt them; a second signal exits at once, after `last_words()` (the terminal restored,
    the resume hint). Either way the run stays resumable."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    count = {"n": 0}

    def on_signal() -> None:
        count["n"] += 1
        if count["n"] > 1:
            # the views may still hold lines of what ended (results.jsonl is not rebuilt later)
            runtime.writer.flush_views(timeout=1.0)
            if last_words is not None:
                last_words()
            os._exit(EXIT_INTERRUPTED)  # the next owner resumes; nothing committed is lost
        (say or err.print)(f"stopping {what}: no new steps; waiting up to {grace:g}s for running steps (signal again to quit now)")
        runtime.stop()
        loop.call_later(grace, runtime.interrupt)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)


def _execute(
    store: Any,
    run_id: str | None,
    workflow: str | None,
    run_input: dict[str, Any] | None,
    grace: float,
    *,
    dry_run: bool = False,
    no_cache: bool = False,
    rerun: Any = None,
    strict: bool = False,
    runtime: Any = None,
    processes: int | None = None,
) -> int:
    """Shared by run, resume, rerun, feedback and fork: views on, execute with signal handling,
    result written."""
    import asyncio

    from statepipe.definition.loader import load
    from statepipe.engine.runtime import Runtime
    from statepipe.views.jsonl import EventFiles, ResultWriter, StdoutEvents
    from statepipe.views.live import LiveView

    out_dir = _output_dir(store, run_id)
    runtime = runtime or Runtime(store, processes=processes)
    files = EventFiles(out_dir, store)
    runtime.listen(files.write)
    results = ResultWriter(out_dir)
    runtime.finished.append(results)
    interactive = sys.stdout.isatty()
    loaded = load(workflow) if workflow else None
    loop_of: list[Any] = []
    closed: list[bool] = []  # the reader left before the loop ran: it stops as it starts

    def stop_now() -> None:
        """From the views' or the stdout watch's thread: start nothing new and stop running
        steps; resumable. Defined before either can call it: a reader may leave as soon as the
        run's first line is out, while this process is still creating the run."""
        closed.append(True)
        if loop_of:
            loop_of[0].call_soon_threadsafe(lambda: (runtime.stop(), runtime.interrupt()))

    if not interactive:
        # a reader that went away (| head) is a first Ctrl-C with no grace: nobody watches
        stdout_events = StdoutEvents(on_closed=stop_now)
        runtime.listen(stdout_events.write)
        stdout_events.watch()
    if run_id is None:
        assert loaded is not None and run_input is not None
        run_id = runtime.create_run(loaded, run_input, dry_run=dry_run, no_cache=no_cache, output_dir=str(out_dir.resolve()))
    err.print(f"run [bold]{run_id}[/bold]" if interactive else f"run {run_id}", highlight=False)

    live = None
    if interactive:
        snap = store.snapshot(run_id)
        live = LiveView(out_console(), run_id, snap.run.workflow, snap)
        runtime.listen(live.update)

    changed_code: list[str] = []  # said after the display is gone: a resume re-running edited steps

    def on_code_changed(events: list[Any]) -> None:
        changed_code.extend(
            f"code changed since the run recorded it: {', '.join(e.data.get('steps') or [])} re-run with what depends on them"
            for e in events if e.type == "code_changed"
        )

    runtime.listen(on_code_changed)

    def last_words() -> None:
        if live is not None:
            live.__exit__(None, None, None)  # the cursor shown again, the last frame kept
        err.print(f"interrupted; the run is resumable: statepipe resume {run_id}", markup=False)

    async def main() -> str:
        loop_of.append(asyncio.get_running_loop())
        if closed:
            runtime.stop()
        say = (lambda msg: setattr(live, "notice", msg)) if live else None
        _drain_on_signals(runtime, grace, "the run", say=say, last_words=last_words)
        return (await runtime.execute(run_id, loaded, rerun=rerun, strict=strict)).state

    began = time.monotonic()
    try:
        if live is not None:
            with live:
                state = asyncio.run(main())
                runtime.writer.flush_views()  # the display's last frame shows how the run ended
        else:
            state = asyncio.run(main())
        runtime.writer.flush()
    finally:
        runtime.writer.flush_views()
        files.close()
        results.close()
    for line in changed_code:
        err.print(line, markup=False)
    _report(store.get_run(run_id), state, time.monotonic() - began, store.snapshot(run_id) if state in ("failed", "waiting") else None)
    if state == "succeeded" and rerun is not None:
        _report_reuse(store.snapshot(run_id), rerun)
    runtime.close()
    return OUTCOME_EXIT.get(state, 0)


def _report_reuse(snap: Any, rerun: Any) -> None:
    """What the rerun saved: steps reused and the time they originally took."""
    from statepipe.engine.rerun import work_time
    from statepipe.views.style import format_duration

    redone = set(rerun.affected_steps)
    reused = [s for s in snap.parents() if s.name not in redone]
    saved = work_time(reused)
    err.print(f"reused {len(reused)} step(s) that originally took {format_duration(saved)}; re-ran {len(redone)}: {', '.join(sorted(redone))}")


def _report_failures(snap: Any) -> None:
    """Where each failed step failed: the last line of its user traceback, or all of it with -v."""
    for step in snap.steps:
        if step.state != "failed" or not step.attempts:
            continue
        last = max(step.attempts, key=lambda a: a.number)
        if last.traceback is None:
            continue
        label = f"{step.name}[{step.item}]" if step.item else step.name
        if OPTS.verbose:
            err.print(f"{label}, attempt {last.number}:\n{last.traceback}", markup=False, highlight=False)
        else:
            frames = [ln.strip() for ln in last.traceback.splitlines() if ln.strip().startswith("File ")]
            if frames:
                err.print(f"  {label}: {frames[-1]} (-v shows the traceback)", markup=False, highlight=False)


def _input_error_types() -> set[str]:
    """Names of InputError and its subclasses, the workflow's own included (it is loaded here)."""
    names, todo = set(), [InputError]
    while todo:
        kind = todo.pop()
        names.add(kind.__name__)
        todo += kind.__subclasses__()
    return names


def _failure_hint(run: Any) -> str:
    """The command that would help, read from the run's error (`step X failed: [item K failed: ]
    message`): resume runs a failed step again as it was, which cannot mend a refused input or
    a step that keeps killing its process."""
    failure = re.match(r"step (\S+) failed: (?:item .+? failed: )*(.*)", run.error or "", re.DOTALL)
    if failure is not None:
        step, message = failure.groups()
        if message.startswith("abandoned ") and " times in a row" in message:
            return f"fix the cause, then run it again with: statepipe rerun {run.id} --from {step}"
        kind, sep, detail = message.partition(": ")
        if sep and kind in _input_error_types():
            named = [k for k in run.input if re.search(rf"\b{re.escape(k)}\b", detail)]
            key = named[0] if len(named) == 1 else "key"
            return f"its input was refused; run it again with another value: statepipe rerun {run.id} --set {key}=..."
    return f"retry the failed steps with: statepipe resume {run.id}"


def _report(run: Any, state: str, took: float, snap: Any = None) -> None:
    """How this execution ended; `took` is its own time, not the run's since it first started.
    A failure says where it happened (with `snap`, the run's snapshot), the hint last."""
    from statepipe.views.style import format_duration

    if state == "succeeded":
        err.print(f"[green]succeeded[/green] in {format_duration(took)} · {run.steps_done}/{run.steps_total} steps · statepipe inspect {run.id[:8]}")
    elif state == "failed":
        err.print(f"[red]failed[/red]: {run.error}")
        if snap is not None:
            _report_failures(snap)
        err.print(_failure_hint(run))
    elif state == "interrupted":
        err.print(f"interrupted; the run is resumable: statepipe resume {run.id}")
    elif state == "paused":
        err.print(f"paused; continue with: statepipe resume {run.id}")
    elif state == "waiting" and snap is not None:
        for step in snap.steps:
            if step.state == "waiting" and step.waiting_for:
                label = f"{step.name}[{step.item}]" if step.item else step.name
                err.print(f"waiting: {label} asks for {step.waiting_for['name']!r}", markup=False)
        asks = [s.waiting_for for s in snap.steps if s.state == "waiting" and s.waiting_for]
        keys = list(((asks[0].get("schema") or {}).get("properties") or {"key": None}) if asks else ["key"])
        pairs = " ".join(f"-i {k}=..." for k in keys)
        err.print(f"send it with: statepipe send {run.id[:8]} {asks[0]['name'] if asks else 'NAME'} {pairs}", markup=False)
    else:
        err.print(f"run {run.id} is {state}")


@app.command()
def run(
    workflow: Annotated[str, typer.Argument(help="Workflow name (in ./workflows), or file.py[:object].")],
    inputs: Annotated[list[str], typer.Option("--input", "-i", help="key=value (value read as JSON if it parses). Repeatable.")] = [],
    input_file: Annotated[Optional[str], typer.Option("--input-file", "-f", help="JSON object file; - reads stdin.")] = None,
    grace: Annotated[float, typer.Option(help="Seconds running steps get to finish after Ctrl-C/SIGTERM.")] = 30.0,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Only enqueue: a `statepipe worker` executes it. Prints the run id.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="LLM calls answered by a simulated model: no key, no cost.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Compute every step, even cacheable ones with a cached output.")] = False,
    processes: Annotated[Optional[int], typer.Option("--processes", min=1, help="Process steps (process=True) running at once; default: the CPU count.")] = None,
) -> None:
    """Run a workflow: live step tree on a terminal, JSONL events when piped."""
    from statepipe.client.runs import check_startable
    from statepipe.definition.loader import load

    run_input = parse_inputs(inputs, input_file)
    loaded = load(workflow)  # a bad workflow is reported before the database is touched
    check_startable(loaded.workflow, run_input, dry_run)
    store = _store()
    if detach:
        from statepipe.engine.runtime import Runtime

        runtime = Runtime(store)
        typer.echo(runtime.create_run(loaded, run_input, detach=True, dry_run=dry_run, no_cache=no_cache))
        runtime.close()
        return
    raise typer.Exit(_execute(store, None, workflow, run_input, grace, dry_run=dry_run, no_cache=no_cache, processes=processes))


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(help="Run id (a unique prefix is enough).")],
    grace: Annotated[float, typer.Option(help="Seconds running steps get to finish after Ctrl-C/SIGTERM.")] = 30.0,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Hand it to a `statepipe worker` instead of running it here.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse if a step's code changed (default: run changed steps again).")] = False,
    processes: Annotated[Optional[int], typer.Option("--processes", min=1, help="Process steps (process=True) running at once; default: the CPU count.")] = None,
) -> None:
    """Continue a run after a crash, Ctrl-C, pause or failure; completed steps are not run again."""
    from statepipe.engine.control import resumable

    store = _store()
    full = store.resolve_run_id(run_id)
    resumable(store, full)
    if detach:
        from statepipe.engine.control import resume_detached
        from statepipe.engine.runtime import Runtime

        runtime = Runtime(store)
        changed = resume_detached(runtime, full)
        runtime.close()
        err.print(f"run {full}: {changed.note}")
        return
    raise typer.Exit(_execute(store, full, None, None, grace, strict=strict, processes=processes))


@app.command()
def inspect(
    run_id: Annotated[str, typer.Argument(help="Run id (a unique prefix is enough).")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    full: Annotated[bool, typer.Option("--full", help="Do not truncate long values.")] = False,
) -> None:
    """Show a run: state, input, result, timings, and every step with its attempts."""
    from statepipe.views.render import inspect_view

    store = _store(max_size=1)
    full_id = store.resolve_run_id(run_id)
    if as_json:  # written as it is read: a run of 100,000 children is never in memory whole
        from statepipe.client.api import inspection
        from statepipe.views.jsondoc import write_json

        with inspection(store, full_id) as doc:
            sys.stdout.flush()
            write_json(doc, sys.stdout.buffer.write)
        return
    snap = store.snapshot(full_id, preview=not full, some_children=not full)
    out_console().print(inspect_view(snap, store.forks_of(snap.run.id), full))


@app.command("list")
def list_runs(
    status: Annotated[list[str], typer.Option("--status", "-s", help="Only runs in this state. Repeatable.")] = [],
    workflow: Annotated[Optional[str], typer.Option("--workflow", "-w", help="Only runs of this workflow.")] = None,
    since: Annotated[Optional[str], typer.Option(help="Only runs created since: 30m, 12h, 7d or an ISO date.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many runs.")] = 20,
    batch: Annotated[Optional[str], typer.Option("--batch", "-b", help="Only runs of this batch (its id, as `batch` prints it).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON array of runs.")] = False,
) -> None:
    """Recent runs, newest first."""
    from statepipe.client.api import RunFilter
    from statepipe.client.runs import run_documents
    from statepipe.views.render import list_table

    chosen = RunFilter.of(status, workflow, since, batch)
    store = _store(max_size=1)
    runs = chosen.rows(store, limit)
    if as_json:
        _emit_json(run_documents(store, runs))
    elif runs:
        out_console().print(list_table(runs))
    _say_what_is_left_out(store, runs, limit, chosen, since)


COUNTED_UP_TO = 10_000  # runs `list` counts when its limit leaves some out (a count of a million took 120 ms)


def _say_what_is_left_out(store: Any, runs: list[Any], limit: int, chosen: Any, since: str | None) -> None:
    """On stderr, so stdout stays the table or JSON: that nothing matched, or how many runs
    --limit left out."""
    if not runs:
        given = [*(f"--status {s}" for s in chosen.states), *([f"--workflow {chosen.workflow}"] if chosen.workflow else []),
                 *([f"--since {since}"] if since else []), *([f"--batch {chosen.batch}"] if chosen.batch else [])]
        err.print(f"no runs match {' '.join(given)}" if given else "no runs yet", markup=False)
    elif len(runs) == limit:
        total = chosen.count(store, at_most=COUNTED_UP_TO)
        if total > COUNTED_UP_TO:
            err.print(f"{limit} of more than {COUNTED_UP_TO:,} runs; --since, --status or --workflow narrow them down", markup=False)
        elif total > limit:
            err.print(f"{limit} of {total} runs; --limit {total} shows them all", markup=False)


@app.command()
def logs(
    run_id: Annotated[str, typer.Argument(help="Run id (a unique prefix is enough).")],
    after: Annotated[int, typer.Option("--after", help="Start after this sequence number.")] = 0,
    follow: Annotated[bool, typer.Option("--follow", "-F", help="Keep printing live events until the run ends.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="With --follow: keep following an interrupted run until someone resumes it.")] = False,
) -> None:
    """A run's events as JSONL. With --follow, exits when the run ends; the exit code says how
    (130: the run is interrupted, nobody executes it; --wait keeps following)."""
    from statepipe.client.events import Follow
    from statepipe.views.jsonl import event_line

    store = _store(max_size=1)
    full = store.resolve_run_id(run_id)
    reading = Follow(store, full, after, follow=follow, wait=wait, on_interrupted=_say_interrupted)
    try:
        for batch in reading:
            sys.stdout.write("".join(event_line(e) + "\n" for e in batch))
            sys.stdout.flush()
        if follow:
            raise typer.Exit(OUTCOME_EXIT[reading.ended or "interrupted"])
    except BrokenPipeError:
        sys.stderr.close()  # the reader left; nothing to report


def _say_interrupted(run: Any) -> None:
    """Tell the reader of an interrupted run so on stderr, rather than wait in silence."""
    from statepipe.views.render import interrupted_note

    err.print(f"run {run.id} is interrupted: {interrupted_note(run)} (logs --follow --wait keeps following)", markup=False)


@app.command()
def workflows(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Workflows found in ./workflows (and STATEPIPE_WORKFLOWS_PATH)."""
    from statepipe.client.workflows import documents
    from statepipe.definition.loader import discover
    from statepipe.views.render import workflows_table

    found = discover()
    if as_json:
        _emit_json(documents(found))
    elif found:
        out_console().print(workflows_table(found))
    if not found:
        err.print(_where_workflows_are_looked_for(), markup=False)


def _where_workflows_are_looked_for() -> str:
    from statepipe.definition.loader import workflow_dirs

    first, *extra = workflow_dirs()
    looked = [f"./workflows{'' if first.is_dir() else ' (no such folder)'}"]
    looked += [f"{d}{'' if d.is_dir() else ' (no such folder)'}" for d in extra] or ["STATEPIPE_WORKFLOWS_PATH (not set)"]
    return (f"no workflows found in {', '.join(looked)}\n"
            f"add a .py file defining a Workflow to ./workflows, or folders of them to STATEPIPE_WORKFLOWS_PATH ('{os.pathsep}'-separated)")


@app.command()
def graph(
    workflow: Annotated[str, typer.Argument(help="Workflow name or file.py[:object].")],
    mermaid: Annotated[bool, typer.Option("--mermaid", help="Mermaid flowchart source.")] = False,
) -> None:
    """Print a workflow's DAG."""
    from statepipe.definition.loader import load
    from statepipe.views.render import graph_mermaid, graph_text

    wf = load(workflow).workflow
    sys.stdout.write((graph_mermaid(wf) if mermaid else graph_text(wf)) + "\n")


def _take_over(runtime: Any, run_id: str) -> None:
    import asyncio

    from statepipe.engine.control import take_over

    asyncio.run(take_over(runtime, run_id, err.print))


def _show_plan(wf: Any, snap: Any, plan: Any) -> None:
    from statepipe.views.style import format_duration

    summary = plan.summary(wf, snap)
    err.print(f"re-run: {', '.join(summary['rerun'])}" + (f" (items {plan.items})" if plan.items else ""))
    err.print(f"keep:   {', '.join(summary['keep']) or '(nothing)'} — {format_duration(summary['reused_s'])} of work reused")
    if summary["llm_calls"]:
        err.print(f"about {summary['llm_calls']} LLM call(s)")


@app.command()
def rerun(
    run_id: Annotated[str, typer.Argument(help="Run id (a unique prefix is enough).")],
    from_steps: Annotated[list[str], typer.Option("--from", help="Run this step and everything downstream again. Repeatable.")] = [],
    items: Annotated[list[str], typer.Option("--item", help="With one fan-out --from step: only this item (and what follows). Repeatable.")] = [],
    sets: Annotated[list[str], typer.Option("--set", help="key=value changes the run input; step.param=value one step's input. Repeatable.")] = [],
    input_file: Annotated[Optional[str], typer.Option("--input-file", "-f", help="A new run input (JSON object; - reads stdin).")] = None,
    feedback: Annotated[Optional[str], typer.Option("--feedback", help="Guidance for the re-run steps (ctx.feedback).")] = None,
    reason: Annotated[Optional[str], typer.Option("--reason", help="Why; recorded with the rerun event.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse if a step's code changed.")] = False,
    grace: Annotated[float, typer.Option(help="Seconds running steps get to finish after Ctrl-C/SIGTERM.")] = 30.0,
) -> None:
    """Run steps again, with everything downstream; every other step keeps its output."""
    from statepipe.definition.loader import load_ref
    from statepipe.engine.rerun import parse_sets, plan_rerun, rerun_reason
    from statepipe.engine.runtime import Runtime

    run_sets, step_sets = parse_sets(sets)
    store = _store()
    full = store.resolve_run_id(run_id)
    snap = store.snapshot(full)
    wf = load_ref(snap.run.workflow_ref).workflow
    plan = plan_rerun(
        wf, snap, from_steps=from_steps, items=items, run_sets=run_sets, step_sets=step_sets,
        new_input=parse_inputs([], input_file) if input_file is not None else None, feedback=feedback,
        reason=reason or rerun_reason(from_steps, items, sets, input_file is not None),
    )
    _show_plan(wf, snap, plan)
    runtime = Runtime(store)
    _take_over(runtime, full)
    raise typer.Exit(_execute(store, full, None, None, grace, rerun=plan, strict=strict, runtime=runtime))


@app.command()
def fork(
    run_id: Annotated[str, typer.Argument(help="Run id (a unique prefix is enough).")],
    from_steps: Annotated[list[str], typer.Option("--from", help="Run this step and what follows anew. Repeatable.")] = [],
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Leave the new run to a `statepipe worker`.")] = False,
    grace: Annotated[float, typer.Option(help="Seconds running steps get to finish after Ctrl-C/SIGTERM.")] = 30.0,
) -> None:
    """A new run sharing this one's outputs upstream of --from; the original stays untouched."""
    from statepipe.engine.runtime import Runtime

    store = _store()
    full = store.resolve_run_id(run_id)
    runtime = Runtime(store)
    new_id = runtime.fork(full, from_steps=from_steps, output_dir=str(_output_dir(store, full).resolve()), detach=detach)
    err.print(f"forked {full} -> {new_id}")
    if detach:
        typer.echo(new_id)
        runtime.close()
        return
    raise typer.Exit(_execute(store, new_id, None, None, grace, runtime=runtime))


@app.command()
def feedback(
    run_id: Annotated[str, typer.Argument(help="Run id (a unique prefix is enough).")],
    text: Annotated[str, typer.Argument(help="What is wrong, in your words.")],
    steps: Annotated[Optional[str], typer.Option("--steps", help="Comma-separated steps to re-run: skips the classifier.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Classifier model (default: STATEPIPE_FEEDBACK_MODEL, the workflow's first, else gpt-4o-mini).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Simulated classifier and models: no key, deterministic.")] = False,
    yes: Yes = False,
    grace: Annotated[float, typer.Option(help="Seconds running steps get to finish after Ctrl-C/SIGTERM.")] = 30.0,
) -> None:
    """Route feedback to the steps it concerns (a model decides, or --steps), show the plan, and
    re-run them with the feedback in ctx.feedback."""
    from statepipe.definition.loader import load_ref
    from statepipe.engine.runtime import Runtime
    from statepipe.llm.feedback import route

    store = _store()
    full = store.resolve_run_id(run_id)
    snap = store.snapshot(full)
    wf = load_ref(snap.run.workflow_ref).workflow
    routed = route(wf, snap, text, [s.strip() for s in (steps or "").split(",") if s.strip()], model, dry_run)
    plan = routed.plan
    err.print(f"feedback routed to {', '.join(plan.steps)}" + (f" ({routed.routing.reason})" if routed.routing.reason else ""))
    _show_plan(wf, snap, plan)
    if not _confirm([snap.run], "apply this plan to", yes, by_filter=True):
        err.print("nothing changed")
        raise typer.Exit(0)
    runtime = Runtime(store)
    _take_over(runtime, full)
    raise typer.Exit(_execute(store, full, None, None, grace, rerun=plan, runtime=runtime))


def _select_runs(store: Any, run_ids: list[str], workflow: str | None, status: list[str], since: str | None, default_states: tuple[str, ...]) -> list[Any]:
    """Runs named by id, or chosen by filter among those in `default_states`."""
    if run_ids:
        if workflow or status or since:
            raise InputError("give run ids or filters (--workflow, --status, --since), not both")
        return [store.get_run(store.resolve_run_id(r)) for r in run_ids]
    if not (workflow or status or since):
        raise InputError("name the runs: give run ids, or select them with --workflow, --status or --since")
    from statepipe.client.runs import parse_since

    return store.list_runs(states=status or default_states, workflow=workflow, since=parse_since(since), limit=10_000)


def _confirm(runs: list[Any], verb: str, yes: bool, by_filter: bool) -> bool:
    """Runs named by id are meant; a filter's catch is shown and confirmed first."""
    if yes or not runs or not by_filter:
        return True
    if not sys.stdin.isatty():
        raise InputError(f"{verb} {len(runs)} run(s)? pass -y to confirm when not on a terminal")
    for r in runs:
        err.print(f"  {r.id[:8]}  {r.workflow}  {r.state}")
    return typer.confirm(f"{verb.capitalize()} {len(runs)} run(s)?", default=False)


def _control(run_ids: list[str], kind: str, verb: str, workflow: str | None, status: list[str], since: str | None, yes: bool, wait: float, as_json: bool) -> None:
    import asyncio

    from statepipe.engine.control import control
    from statepipe.engine.runtime import Runtime

    store = _store()
    runs = _select_runs(store, run_ids, workflow, status, since, ("pending", "running", "paused") if kind.startswith("cancel") else ("pending", "running"))
    if not _confirm(runs, verb, yes, by_filter=not run_ids):
        raise typer.Exit(EXIT_INTERRUPTED)
    runtime = Runtime(store)

    async def main() -> list[Any]:
        return [await control(runtime, r.id, kind, wait) for r in runs]

    try:
        changed = asyncio.run(main())
    finally:
        runtime.close()
    if as_json:
        _emit_json([c.as_json() for c in changed])
        return
    if not changed:
        err.print("no runs matched")
    for c in changed:
        note = f" ({c.note})" if c.note else ""
        typer.echo(f"{c.run_id}  {c.before} -> {c.after}{note}")


RunIds = Annotated[Optional[list[str]], typer.Argument(help="Run ids (unique prefixes are enough).", show_default=False)]
FilterWorkflow = Annotated[Optional[str], typer.Option("--workflow", "-w", help="Every matching run of this workflow.")]
FilterStatus = Annotated[list[str], typer.Option("--status", "-s", help="Only runs in this state. Repeatable.")]
FilterSince = Annotated[Optional[str], typer.Option(help="Only runs created since: 30m, 12h, 7d or an ISO date.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
AsJson = Annotated[bool, typer.Option("--json", help="What changed, as JSON.")]


@app.command()
def cancel(
    run_ids: RunIds = None,
    workflow: FilterWorkflow = None,
    status: FilterStatus = [],
    since: FilterSince = None,
    compensate: Annotated[bool, typer.Option("--compensate", help="Undo completed steps that declare a compensation.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a live owner to stop.")] = 30.0,
    yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Cancel runs, whether their process is alive or dead."""
    from statepipe.engine.control import cancel_request

    _control(run_ids or [], cancel_request(compensate), "cancel", workflow, status, since, yes, wait, as_json)


@app.command()
def pause(
    run_ids: RunIds = None,
    workflow: FilterWorkflow = None,
    status: FilterStatus = [],
    since: FilterSince = None,
    now: Annotated[bool, typer.Option("--now", help="Stop running steps too (they run again on resume).")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a live owner to pause.")] = 0.0,
    yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Pause runs: no new step starts; running steps finish (or stop, with --now)."""
    from statepipe.engine.control import pause_request

    kind, wait = pause_request(now, wait)
    _control(run_ids or [], kind, "pause", workflow, status, since, yes, wait, as_json)


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Runs in flight at once.")] = 4,
    workflows: Annotated[Optional[str], typer.Option("--workflows", help="Comma-separated workflow names to take (default: all).")] = None,
    grace: Annotated[float, typer.Option(help="Seconds running steps get to finish on SIGTERM/SIGINT.")] = 30.0,
    until_idle: Annotated[bool, typer.Option("--until-idle", help="Exit when no run is left to claim.")] = False,
    processes: Annotated[Optional[int], typer.Option("--processes", min=1, help="Process steps (process=True) running at once; default: the CPU count.")] = None,
    children: Annotated[int, typer.Option("--children", min=1, help="Children of distributed fan-outs (distribute=True) running at once.")] = config.CHILD_SLOTS,
) -> None:
    """Execute runs from the shared database: enqueued ones, released ones, and those whose owner
    died; and the children of any run's distributed fan-outs."""
    import asyncio

    from statepipe.engine.runtime import Runtime
    from statepipe.views.jsonl import EventFiles, ResultWriter

    store = _store(max_size=max(4, concurrency + 2))
    out_dir = config.output_dir(OPTS.output_dir)
    runtime = Runtime(store, processes=processes, child_slots=children)
    files = EventFiles(out_dir, store)
    runtime.listen(files.write)
    results = ResultWriter(out_dir)
    runtime.finished.append(results)
    # plain lines: a busy worker prints hundreds a second, and they are meant for logs and grep
    runtime.finished.append(lambda outcome: print(f"{outcome.run_id} {outcome.state}", file=sys.stderr, flush=True))
    names = [w.strip() for w in workflows.split(",") if w.strip()] if workflows else None
    err.print(f"worker {runtime.owner}: up to {concurrency} runs" + (f" of {', '.join(names)}" if names else "")
              + f" and {children} distributed children")

    async def main() -> int:
        _drain_on_signals(runtime, grace, "the worker")
        return await runtime.work(concurrency, workflows=names, until_idle=until_idle)

    try:
        done = asyncio.run(main())
    finally:
        runtime.writer.flush_views()
        files.close()
        results.close()
        runtime.close()
    err.print(f"worker stopped after finishing {done} run(s)")


@app.command()
def send(
    run_id: Annotated[str, typer.Argument(help="Run id (a unique prefix is enough).")],
    name: Annotated[str, typer.Argument(help="The input's name, as the step's ctx.wait_for asks for it.")],
    inputs: Annotated[list[str], typer.Option("--input", "-i", help="key=value of the value (an object). Repeatable.")] = [],
    input_file: Annotated[Optional[str], typer.Option("--input-file", "-f", help="The value as a JSON file; - reads stdin.")] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Only deliver: a `statepipe worker` continues the run.")] = False,
    grace: Annotated[float, typer.Option(help="Seconds running steps get to finish after Ctrl-C/SIGTERM.")] = 30.0,
) -> None:
    """Send a value to a run's step waiting for input (ctx.wait_for), then continue the run here."""
    from statepipe.engine.waits import send as deliver

    store = _store()
    full = store.resolve_run_id(run_id)
    value: Any = read_value(input_file) if input_file is not None and not inputs else parse_inputs(inputs, input_file)
    done = deliver(store, full, name, value)
    err.print(f"{full[:8]} {name}: {done['note']}", markup=False)
    if detach:
        return
    run = store.get_run(full)
    if run.state != "waiting" or run.owner is not None:
        err.print("the run's owner carries on with it" if run.owner else f"the run is {run.shown_state}", markup=False)
        return
    try:
        raise typer.Exit(_execute(store, full, None, None, grace))
    except ConflictError:  # a worker took it up first: it continues there
        err.print("a worker continues the run", markup=False)


def read_value(path: str) -> Any:
    """Any JSON value from a file (`-`: stdin): an input's value need not be an object."""
    from statepipe.inputs import json_value

    return json_value(read_text(path, "stdin" if path == "-" else f"input file {path}"), path)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind; beyond loopback a --token is required.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8765,
    worker: Annotated[bool, typer.Option("--worker/--no-worker", help="Also execute runs, as `statepipe worker` does.")] = True,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Runs the server's worker executes at once.")] = 4,
    token: Annotated[Optional[str], typer.Option(envvar="STATEPIPE_SERVE_TOKEN", help="Bearer token clients must send (required off loopback).", show_default=False)] = None,
    grace: Annotated[float, typer.Option(help="Seconds running steps get to finish on SIGTERM/SIGINT.")] = 30.0,
) -> None:
    """Serve the HTTP API (docs at /docs), resumable event streams and the live dashboard."""
    if host not in LOOPBACK and not token:
        raise InputError(f"serving on {host} opens statepipe to other machines: give --token (or STATEPIPE_SERVE_TOKEN)")
    import uvicorn

    from statepipe.views.web.app import ServeConfig, create_app

    app_ = create_app(ServeConfig(
        database_url=config.database_url(OPTS.database_url), output_dir=config.output_dir(OPTS.output_dir),
        worker=worker, concurrency=concurrency, grace=grace, token=token,
    ))
    server = uvicorn.Server(uvicorn.Config(app_, host=host, port=port, log_level="warning", lifespan="on"))
    shown = f"[{host}]" if ":" in host else host
    err.print(f"statepipe serving http://{shown}:{port}  (API docs: /docs" + ("; worker on" if worker else "") + ")", markup=False)
    server.run()


@app.command()
def batch(
    workflow: Annotated[str, typer.Argument(help="Workflow name or file.py[:object].")],
    inputs_file: Annotated[Path, typer.Argument(help="JSONL: one JSON object of input per line.", show_default=False)],
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Runs in flight at once.")] = 4,
    processes: Annotated[Optional[int], typer.Option("--processes", "-p", min=1, help="Worker processes (default: min(concurrency, CPUs)).")] = None,
    batch_id: Annotated[Optional[str], typer.Option("--batch-id", help="Name of the batch (default: derived from the workflow and inputs).")] = None,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Print each run's result line to stdout.")] = False,
) -> None:
    """One run per input line over a pool of processes; exit 0 only if every run succeeded.

    Run it again with the same file and only what did not succeed runs again."""
    from multiprocessing.connection import wait as wait_processes

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Table

    from statepipe.definition.loader import load
    from statepipe.engine import batch as batches
    from statepipe.engine.runtime import Runtime
    from statepipe.store.database import resolve_url
    from statepipe.views.jsonl import result_line

    loaded = load(workflow)
    inputs = batches.read_inputs(inputs_file, str(inputs_file))
    bid = batch_id or batches.batch_id_for(loaded.workflow.name, inputs)
    out_dir = config.output_dir(OPTS.output_dir)
    nproc = processes or batches.default_processes(concurrency)
    url = resolve_url(config.database_url(OPTS.database_url))
    began = time.monotonic()
    pool, go = batches.start_pool(url, bid, concurrency, nproc, out_dir, config.lease_seconds())
    try:
        store = _store()
        runtime = Runtime(store)
        plan = batches.prepare(runtime, loaded, inputs, bid, output_dir=str(out_dir.resolve()))
    except BaseException:
        for p in pool:
            p.terminate()
        raise
    go.set()
    err.print(f"batch {bid}: {plan.total} inputs; {plan.created} new, {plan.retried} to retry, {plan.kept} kept")
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/] [yellow]{task.fields[running]} running[/]"),
        TextColumn("{task.fields[rate]}/s"), TimeElapsedColumn(), TimeRemainingColumn(), console=err, disable=not err.is_terminal,
    )
    try:
        with progress:
            task = progress.add_task(loaded.workflow.name, total=plan.total, ok=0, failed=0, running=0, rate="0.0")
            while True:
                alive = any(p.is_alive() for p in pool)
                counts = batches.summary(store, bid)
                finished = counts["succeeded"] + counts["failed"] + counts["cancelled"]
                rate = finished / max(time.monotonic() - began, 1e-6)
                progress.update(task, completed=finished, ok=counts["succeeded"], failed=counts["failed"] + counts["cancelled"], running=counts["running"], rate=f"{rate:.1f}")
                if not alive:
                    break
                wait_processes([p.sentinel for p in pool], timeout=0.25)
    except KeyboardInterrupt:
        err.print("stopping the batch: workers finish their running steps; run the same command to continue")
        batches.drain(pool)
        for p in pool:
            p.join()
        raise typer.Exit(EXIT_INTERRUPTED) from None
    for p in pool:
        p.join()
    elapsed = time.monotonic() - began
    if jsonl:  # every run's row and result: read only when asked for
        runs = store.batch_runs(bid)
        results = store.results([r.id for r in runs.values()])
        for index in sorted(runs):
            run = runs[index]
            sys.stdout.write(result_line(run, results.get(run.id)) + "\n")
    counts = batches.summary(store, bid)
    table = Table(title=f"batch {bid}", title_justify="left")
    for col in ("runs", "succeeded", "failed", "cancelled", "unfinished", "time", "runs/s"):
        table.add_column(col, justify="right")
    unfinished = plan.total - counts["succeeded"] - counts["failed"] - counts["cancelled"]
    table.add_row(str(plan.total), str(counts["succeeded"]), str(counts["failed"]), str(counts["cancelled"]), str(unfinished), f"{elapsed:.1f}s", f"{(plan.created + plan.retried) / max(elapsed, 1e-6):.1f}")
    err.print(table)
    if counts["succeeded"] < plan.total:
        _batch_failures(store, bid, plan.total)
    err.print(
        f"batch {bid}: {counts['succeeded']} of {plan.total} succeeded"
        + (f", {counts['failed']} failed" if counts["failed"] else "")
        + (f", {counts['cancelled']} cancelled" if counts["cancelled"] else "")
        + (f", {unfinished} unfinished" if unfinished else "")
        + f" in {elapsed:.1f}s"
        + ("" if counts["succeeded"] == plan.total else f"; see: statepipe list --batch {bid}"),
        markup=False, highlight=False,
    )
    runtime.close()
    raise typer.Exit(0 if counts["succeeded"] == plan.total else EXIT_RUN_FAILED)


def _batch_failures(store: Any, batch_id: str, total: int, shown: int = 20) -> None:
    """Which inputs did not succeed: their line, run and error, the first `shown` of them."""
    from rich.table import Table

    from statepipe.views.style import STATE_STYLE

    runs = [r for r in store.list_runs(batch_id=batch_id, limit=total) if r.shown_state != "succeeded"]
    runs.sort(key=lambda r: r.batch_index or 0)
    table = Table(title="did not succeed", title_justify="left")
    table.add_column("input", justify="right", no_wrap=True)
    table.add_column("run", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("error", overflow="fold")
    for r in runs[:shown]:
        state = r.shown_state
        table.add_row(f"#{(r.batch_index or 0) + 1}", r.id[:8], f"[{STATE_STYLE.get(state, '')}]{state}[/]", (r.error or "").splitlines()[0] if r.error else "")
    err.print(table)
    if len(runs) > shown:
        err.print(f"… and {len(runs) - shown} more", markup=False)


@app.command()
def prune(
    older_than: Annotated[str, typer.Option("--older-than", help="Runs created and finished longer ago than this: 30d, 12h, or an ISO date.", show_default=False)],
    state: Annotated[list[str], typer.Option("--state", "-s", help="Only runs in this state: succeeded, failed or cancelled. Repeatable (default: all three).")] = [],
    keep_last: Annotated[int, typer.Option("--keep-last", min=0, help="Keep each workflow's newest N runs (of these states) whatever their age.")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="What was removed, as one JSON object.")] = False,
) -> None:
    """Delete old finished runs with their steps, attempts, events and event files, a few hundred
    runs a transaction. A running, pending, paused, waiting or interrupted run is never deleted;
    a run forked from a deleted one keeps its own copies and goes on working."""
    from statepipe.client.runs import parse_since
    from statepipe.lifecycles.machines import RUN_FINISHED

    for s in state:
        if s not in RUN_FINISHED:
            raise InputError(f"prune deletes finished runs only: --state {', '.join(RUN_FINISHED[:-1])} or {RUN_FINISHED[-1]}, not {s!r}")
    cutoff = parse_since(older_than, "--older-than")
    assert cutoff is not None  # the option is required
    store = _store(max_size=1)
    here = config.output_dir(OPTS.output_dir)
    totals = {"runs": 0, "steps": 0, "attempts": 0, "events": 0}
    files = 0
    for batch in store.prune(cutoff, list(state or RUN_FINISHED), keep_last, dry_run):
        for table, n in batch.rows.items():
            totals[table] = totals.get(table, 0) + n
        for run_id, recorded in batch.runs:  # the rows went first: the files are derived from them
            for folder in {here, *([Path(recorded)] if recorded else [])}:
                path = folder / f"{run_id}.jsonl"
                if path.exists():
                    files += 1
                    if not dry_run:
                        path.unlink(missing_ok=True)
    totals["files"] = files
    if as_json:
        _emit_json({"dry_run": dry_run, "cutoff": cutoff.isoformat(), **totals})
        return
    counts = ", ".join(f"{n:,} {table}" for table, n in totals.items() if table != "runs")
    if not totals["runs"]:
        err.print(f"nothing to prune: no {'/'.join(state or RUN_FINISHED)} runs created and finished before {cutoff:%Y-%m-%d %H:%M}"
                  + (f" beyond each workflow's newest {keep_last}" if keep_last else ""), markup=False)
    else:
        err.print(f"{'would delete' if dry_run else 'deleted'} {totals['runs']:,} runs: {counts}", markup=False)


def _size(n: int) -> str:
    """812 bytes, 12.3 kB, 4.5 MB, 1.2 GB."""
    if n < 1024:
        return f"{n:,} bytes"
    value, unit = n / 1024, "kB"
    for bigger in ("MB", "GB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


@db_app.command("status")
def db_status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Where the data lives, whether the server is up, the database's size and each table's rows."""
    from statepipe.store import embedded

    url = config.database_url(OPTS.database_url)
    if url:
        info: dict[str, Any] = {"mode": "external", "url": re.sub(r":[^:@/]*@", ":***@", url)}
    else:
        st = embedded.status()
        info = {"mode": "embedded", "data_dir": str(st.pgdata), "running": st.running, "pid": st.pid, "url": st.url if st.running else None}
    if url or info["running"]:  # a stopped embedded server stays stopped: its sizes wait for it
        info.update(_store(max_size=1).table_sizes())
    if as_json:
        _emit_json(info)
        return
    tables = info.pop("tables", {})
    size = info.pop("database_bytes", None)
    for key, value in info.items():
        typer.echo(f"{key:10} {value}")
    if size is not None:
        typer.echo(f"{'size':10} {_size(size)}")
    for name, t in tables.items():
        rows = f"~{t['rows']:,} rows (estimated)" if t["estimated"] else f"{t['rows']:,} rows"
        typer.echo(f"{name:10} {rows}, {_size(t['bytes'])}")


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded server (the next command starts it again)."""
    from statepipe.store import embedded

    typer.echo("stopped" if embedded.stop() else "not running")


SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_STATEPIPE_COMPLETE"  # set by the completion script when the shell asks


@app.command()
def completion(
    shell: Annotated[str | None, typer.Argument(help="bash, zsh or fish (default: the one in $SHELL).", show_default=False)] = None,
    install: Annotated[bool, typer.Option("--install", help="Write the script where the shell loads it, instead of printing it.")] = False,
) -> None:
    """Shell completion of commands, options and values: print the script, or --install it."""
    import click
    from click.shell_completion import get_completion_class

    name = shell or Path(os.environ.get("SHELL", "")).name
    if name not in SHELLS:
        raise InputError(f"unknown shell {name!r}; name one: statepipe completion bash|zsh|fish" if name else
                         "cannot tell your shell from $SHELL; name it: statepipe completion bash|zsh|fish")
    complete = get_completion_class(name)
    assert complete is not None  # click ships all three
    script = complete(click.get_current_context().find_root().command, {}, "statepipe", COMPLETE_VAR).source()
    if not install:
        typer.echo(script)
        return
    err.print(_install_completion(name, script), markup=False)


def _install_completion(shell: str, script: str) -> str:
    """The script is written whole (a new shell does not run statepipe to get it) and, for bash
    and zsh, loaded from the rc file by one line, added once. Returns what was done."""
    home = Path.home()
    rc: Path | None = None
    if shell == "fish":  # fish loads completions/<command>.fish by itself
        target = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "fish" / "completions" / "statepipe.fish"
    elif shell == "zsh":
        target = home / ".zfunc" / "_statepipe"
        rc, line = Path(os.environ.get("ZDOTDIR") or home) / ".zshrc", "fpath=(~/.zfunc $fpath); autoload -Uz compinit && compinit  # statepipe completion"
    else:
        target = home / ".bash_completions" / "statepipe.sh"
        rc, line = home / ".bashrc", "source ~/.bash_completions/statepipe.sh  # statepipe completion"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(script + "\n")
        if rc is not None and line not in (rc.read_text() if rc.exists() else ""):
            with rc.open("a") as f:
                f.write(f"\n{line}\n")
    except OSError as exc:
        from statepipe.errors import ConfigError

        raise ConfigError(f"cannot install {shell} completion: {exc.strerror}: {exc.filename}") from exc
    loaded = f", loaded from {rc}" if rc is not None else ""
    return f"{shell} completion installed in {target}{loaded}; it works in shells started from now on"


def _usage_error(exc: Any) -> str:
    """A click usage error as statepipe's one-line error plus one line saying where to look."""
    from difflib import get_close_matches

    import click

    message = " ".join(exc.format_message().split())
    message = message[:1].lower() + message[1:] if message[1:2].islower() else message
    ctx = exc.ctx
    typed = re.fullmatch(r"no such command '(.+)'\.", message)
    if typed and ctx is not None and isinstance(ctx.command, click.Group):
        close = get_close_matches(typed.group(1), ctx.command.list_commands(ctx), n=1)
        message += f" Did you mean {close[0]!r}?" if close else ""
    return f"statepipe: error: {message}\nsee: {ctx.command_path if ctx is not None else 'statepipe'} --help"


def _command() -> Any:
    """The click command tree, every command taking the global options after its name too."""
    import click

    root = typer.main.get_command(app)
    groups = [root]
    while groups:
        group = groups.pop()
        assert isinstance(group, click.Group)
        for sub in group.commands.values():
            if isinstance(sub, click.Group):
                groups.append(sub)
            else:
                sub.params.extend(_late_globals())
    return root


def main() -> None:
    """Usage errors are two lines (the error, and where to look) and statepipe's own errors one,
    each with the exit code the README lists; tracebacks only with --verbose."""
    import click

    command = _command()
    instruction = os.environ.get(COMPLETE_VAR)
    if instruction:  # click's protocol, as the scripts of `statepipe completion` speak it
        from click.shell_completion import shell_complete

        sys.exit(shell_complete(command, {}, "statepipe", COMPLETE_VAR, instruction))
    try:
        code = command.main(prog_name="statepipe", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # `statepipe` alone: the help, as before
        from typer import rich_utils

        rich_utils.rich_format_error(exc)
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        err.print(_usage_error(exc), markup=False)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        err.print(f"statepipe: error: {exc.format_message()}", markup=False)
        sys.exit(exc.exit_code)
    except click.Abort:  # a confirmation prompt met Ctrl-C or the end of its input
        err.print("statepipe: aborted; nothing changed", markup=False)
        sys.exit(EXIT_INTERRUPTED)
    except StatepipeError as exc:
        if OPTS.verbose:
            traceback.print_exc()
        err.print(f"statepipe: error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code or 0)
