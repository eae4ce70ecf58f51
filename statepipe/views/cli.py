"""The `statepipe` command. Every failure a user can cause is a StatepipeError, printed as one
line on stderr with its exit code (README: "Exit codes"); tracebacks only with --verbose."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from statepipe import config
from statepipe.errors import (
    EXIT_INTERRUPTED,
    EXIT_RUN_CANCELLED,
    EXIT_RUN_FAILED,
    InputError,
    StatepipeError,
)

app = typer.Typer(
    name="statepipe",
    help="Run long AI workflows that survive anything: watch, resume, inspect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Manage the embedded PostgreSQL.", no_args_is_help=True)
app.add_typer(db_app, name="db")

OUTCOME_EXIT = {"succeeded": 0, "failed": EXIT_RUN_FAILED, "cancelled": EXIT_RUN_CANCELLED, "interrupted": EXIT_INTERRUPTED}


@dataclass
class Options:
    database_url: str | None = None
    output_dir: str | None = None
    verbose: bool = False


OPTS = Options()
err = Console(stderr=True, highlight=False)


def out_console() -> Console:
    return Console(highlight=False)


@app.callback()
def _global(
    database_url: Annotated[Optional[str], typer.Option("--database-url", help="PostgreSQL URL (default: STATEPIPE_DATABASE_URL, else the embedded server).", show_default=False)] = None,
    output_dir: Annotated[Optional[str], typer.Option("--output-dir", help="Where JSONL files go (default: STATEPIPE_OUTPUT_DIR, else ./output).", show_default=False)] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks.")] = False,
) -> None:
    OPTS.database_url, OPTS.output_dir, OPTS.verbose = database_url, output_dir, verbose


def _store(max_size: int = 4) -> Any:
    from statepipe.store.database import open_store

    return open_store(config.database_url(OPTS.database_url), max_size=max_size)


def _emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


# -- input ------------------------------------------------------------------------------------


def parse_inputs(pairs: list[str], input_file: str | None) -> dict[str, Any]:
    """`--input-file` (a path, or - for stdin) gives a JSON object; each `-i key=value` sets one
    key, its value read as JSON when it parses (3, true, [1,2]) and as a string otherwise."""
    data: dict[str, Any] = {}
    if input_file is not None:
        source = "stdin" if input_file == "-" else input_file
        try:
            text = sys.stdin.read() if input_file == "-" else Path(input_file).read_text()
        except OSError as exc:
            raise InputError(f"cannot read input file {source}: {exc.strerror or exc}") from exc
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON in {source}: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
        if not isinstance(loaded, dict):
            raise InputError(f"input in {source} must be a JSON object, got {type(loaded).__name__}")
        data.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip() or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key.strip()):
            raise InputError(f"invalid -i {pair!r}: expected key=value")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        data[key.strip()] = value
    return data


def parse_since(text: str | None) -> datetime | None:
    """'90s', '30m', '12h', '7d', or an ISO date/time."""
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)\s*([smhdw])", text.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
        return datetime.now(timezone.utc) - timedelta(**{unit: int(m.group(1))})
    try:
        ts = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InputError(f"invalid --since {text!r}: use 30m, 12h, 7d or an ISO date") from exc
    return ts if ts.tzinfo else ts.astimezone()


# -- executing --------------------------------------------------------------------------------


def _execute(store: Any, run_id: str | None, workflow: str | None, run_input: dict[str, Any] | None, grace: float) -> int:
    """Shared by run and resume: views on, execute with signal handling, result written."""
    import asyncio

    from statepipe.definition.loader import load
    from statepipe.engine.runtime import Runtime
    from statepipe.views.jsonl import EventFiles, StdoutEvents, append_result, result_record
    from statepipe.views.live import LiveView

    out_dir = config.output_dir(OPTS.output_dir)
    runtime = Runtime(store)
    files = EventFiles(out_dir, store)
    runtime.listen(files.write)
    interactive = sys.stdout.isatty()
    loaded = load(workflow) if workflow else None
    piped = StdoutEvents()
    if not interactive:
        runtime.listen(piped.write)
    if run_id is None:
        assert loaded is not None and run_input is not None
        run_id = runtime.create_run(loaded, run_input)
    err.print(f"run [bold]{run_id}[/bold]" if interactive else f"run {run_id}", highlight=False)

    console = out_console()
    live = LiveView(console, run_id, loaded.workflow.name if loaded else store.get_run(run_id).workflow, store.snapshot(run_id)) if interactive else None
    if live is not None:
        runtime.listen(live.update)

    async def main() -> str:
        loop = asyncio.get_running_loop()
        signals = {"count": 0}

        def on_signal(signum: int) -> None:
            signals["count"] += 1
            if signals["count"] > 1:
                os._exit(EXIT_INTERRUPTED)  # the next owner resumes; nothing committed is lost
            err.print(f"stopping: no new steps; waiting up to {grace:g}s for running steps (again to quit now)")
            runtime.stop()
            loop.call_later(grace, runtime.interrupt)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        outcome = await runtime.execute(run_id, loaded)
        return outcome.state

    try:
        if live is not None:
            with live:
                state = asyncio.run(main())
        else:
            state = asyncio.run(main())
        runtime.writer.flush()
    finally:
        files.close()
    run = store.get_run(run_id)
    if state in ("succeeded", "failed", "cancelled"):
        append_result(out_dir, result_record(run, store.results([run_id]).get(run_id)))
    _report(run, state, interactive)
    runtime.close()
    return OUTCOME_EXIT.get(state, 0)


def _report(run: Any, state: str, interactive: bool) -> None:
    from statepipe.views.style import format_duration

    if state == "succeeded":
        err.print(f"[green]succeeded[/green] in {format_duration(run.duration)} · {run.steps_done}/{run.steps_total} steps · statepipe inspect {run.id[:8]}")
    elif state == "failed":
        err.print(f"[red]failed[/red]: {run.error}\nretry the failed steps with: statepipe resume {run.id}")
    elif state == "interrupted":
        err.print(f"interrupted; the run is resumable: statepipe resume {run.id}")
    else:
        err.print(f"run {run.id} is {state}")


@app.command()
def run(
    workflow: Annotated[str, typer.Argument(help="Workflow name (in ./workflows), or file.py[:object].")],
    inputs: Annotated[list[str], typer.Option("--input", "-i", help="key=value (value read as JSON if it parses). Repeatable.")] = [],
    input_file: Annotated[Optional[str], typer.Option("--input-file", "-f", help="JSON object file; - reads stdin.")] = None,
    grace: Annotated[float, typer.Option(help="Seconds running steps get to finish after Ctrl-C/SIGTERM.")] = 30.0,
) -> None:
    """Run a workflow: live step tree on a terminal, JSONL events when piped."""
    from statepipe.definition.loader import load

    run_input = parse_inputs(inputs, input_file)
    load(workflow)  # a bad workflow is reported before the database is touched
    store = _store()
    raise typer.Exit(_execute(store, None, workflow, run_input, grace))


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(help="Run id (a unique prefix is enough).")],
    grace: Annotated[float, typer.Option(help="Seconds running steps get to finish after Ctrl-C/SIGTERM.")] = 30.0,
) -> None:
    """Continue a run after a crash, Ctrl-C or failure; completed steps are not run again."""
    store = _store()
    full = store.resolve_run_id(run_id)
    run = store.get_run(full)
    if run.state in ("succeeded", "cancelled"):
        from statepipe.errors import ConflictError

        raise ConflictError(f"run {full} already {run.state}; nothing to resume")
    raise typer.Exit(_execute(store, full, None, None, grace))


@app.command()
def inspect(
    run_id: Annotated[str, typer.Argument(help="Run id (a unique prefix is enough).")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    full: Annotated[bool, typer.Option("--full", help="Do not truncate long values.")] = False,
) -> None:
    """Show a run: state, input, result, timings, and every step with its attempts."""
    from statepipe.views.render import inspect_json, inspect_view

    store = _store(max_size=1)
    snap = store.snapshot(store.resolve_run_id(run_id))
    if as_json:
        _emit_json(inspect_json(snap))
    else:
        out_console().print(inspect_view(snap, full))


@app.command("list")
def list_runs(
    status: Annotated[list[str], typer.Option("--status", "-s", help="Only runs in this state. Repeatable.")] = [],
    workflow: Annotated[Optional[str], typer.Option("--workflow", "-w", help="Only runs of this workflow.")] = None,
    since: Annotated[Optional[str], typer.Option(help="Only runs created since: 30m, 12h, 7d or an ISO date.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many runs.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON array of runs.")] = False,
) -> None:
    """Recent runs, newest first."""
    from statepipe.lifecycles import RUN_STATES
    from statepipe.views.render import list_table

    for s in status:
        if s not in RUN_STATES:
            raise InputError(f"unknown state {s!r}; one of {', '.join(RUN_STATES)}")
    since_ts = parse_since(since)
    store = _store(max_size=1)
    runs = store.list_runs(states=status, workflow=workflow, since=since_ts, limit=limit)
    if as_json:
        results = store.results([r.id for r in runs])
        _emit_json([r.as_json(results.get(r.id)) for r in runs])
    else:
        out_console().print(list_table(runs))


@app.command()
def logs(
    run_id: Annotated[str, typer.Argument(help="Run id (a unique prefix is enough).")],
    after: Annotated[int, typer.Option("--after", help="Start after this sequence number.")] = 0,
    follow: Annotated[bool, typer.Option("--follow", "-F", help="Keep printing live events until the run ends.")] = False,
) -> None:
    """A run's events as JSONL. With --follow, exits when the run ends; the exit code says how."""
    from statepipe.store.store import channel
    from statepipe.views.jsonl import TERMINAL_EVENTS, event_line

    store = _store(max_size=1)
    full = store.resolve_run_id(run_id)
    write = sys.stdout.write

    def drain(last: int) -> tuple[int, str | None]:
        ended = None
        while True:
            batch = store.events_after(full, last)
            for e in batch:
                write(event_line(e) + "\n")
                ended = TERMINAL_EVENTS.get(e.type, ended)
                if e.type in ("run_started", "run_resumed"):
                    ended = None
            if batch:
                last = batch[-1].seq
                sys.stdout.flush()
            if len(batch) < 5000:
                return last, ended

    try:
        if not follow:
            drain(after)
            return
        with store.listening(channel(full)) as conn:
            last, ended = drain(after)
            if ended is None:
                state = store.get_run(full).state
                if state in TERMINAL_EVENTS.values() and store.get_run(full).last_seq <= last:
                    ended = state
            while ended is None:
                for _ in conn.notifies(timeout=5.0, stop_after=1):
                    pass
                last, ended = drain(last)
        raise typer.Exit(OUTCOME_EXIT[ended])
    except BrokenPipeError:
        sys.stderr.close()  # the reader left; nothing to report


@app.command()
def workflows(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Workflows found in ./workflows (and STATEPIPE_WORKFLOWS_PATH)."""
    from statepipe.definition.loader import discover
    from statepipe.views.render import workflows_table

    found = discover()
    if as_json:
        _emit_json([w.__dict__ for w in found])
    else:
        out_console().print(workflows_table(found))


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


@db_app.command("status")
def db_status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Where the data lives and whether the server is up."""
    from statepipe.store import embedded

    url = config.database_url(OPTS.database_url)
    if url:
        info: dict[str, Any] = {"mode": "external", "url": re.sub(r":[^:@/]*@", ":***@", url)}
    else:
        st = embedded.status()
        info = {"mode": "embedded", "data_dir": str(st.pgdata), "running": st.running, "pid": st.pid, "url": st.url if st.running else None}
    if as_json:
        _emit_json(info)
        return
    for key, value in info.items():
        typer.echo(f"{key:10} {value}")


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded server (the next command starts it again)."""
    from statepipe.store import embedded

    typer.echo("stopped" if embedded.stop() else "not running")


def main() -> None:
    """Typer handles usage errors (exit 2); statepipe's own errors become one line here."""
    try:
        app()
    except StatepipeError as exc:
        if OPTS.verbose:
            traceback.print_exc()
        err.print(f"statepipe: error: {exc}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
