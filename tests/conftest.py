"""Fixtures: a real PostgreSQL (the embedded one, or STATEPIPE_DATABASE_URL), a fresh database
per test cloned from a migrated template, and a helper that runs the real `statepipe` CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from statepipe.store.database import open_store
from statepipe.store.store import Store, ensure_schema

REPO = Path(__file__).resolve().parent.parent
TEST_WORKFLOWS = Path(__file__).resolve().parent / "workflows"
# one per test process (pytest-xdist's gw0, gw1...): on a shared STATEPIPE_DATABASE_URL server
# each process drops and makes its own
TEMPLATE = f"statepipe_test_template_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"


def _with_db(url: str, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """The admin URL of the server every test database lives on."""
    external = os.environ.get("STATEPIPE_DATABASE_URL")
    if external:
        yield external
        return
    from statepipe.store import embedded

    # not under pytest's basetemp: a concurrent pytest session may prune that while we run
    home = Path(tempfile.mkdtemp(prefix="statepipe-test-"))
    os.environ["STATEPIPE_HOME"] = str(home)
    info = embedded.ensure_running()
    try:
        yield info.url
    finally:
        embedded.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def template_url(server_url: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    url = _with_db(server_url, TEMPLATE)
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_schema(conn)
    return url


@pytest.fixture
def db_url(server_url: str, template_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, migrated database for this test; CLI subprocesses get it through the env."""
    name = f"sp_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE)))
    url = _with_db(server_url, name)
    monkeypatch.setenv("STATEPIPE_DATABASE_URL", url)
    yield url
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = open_store(db_url, max_size=8)
    yield s
    s.pool.close()


@pytest.fixture
def output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    out = tmp_path / "output"
    monkeypatch.setenv("STATEPIPE_OUTPUT_DIR", str(out))
    return out


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("COLUMNS", None)
    env.update(extra)
    return env


class CLI:
    """Runs the real command in a subprocess, from the repository root."""

    def __init__(self, db_url: str, output_dir: Path) -> None:
        self.db_url = db_url
        self.output_dir = output_dir

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "statepipe", *args]

    def __call__(self, *args: str, input: str | None = None, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), cwd=REPO, env=cli_env(**env), input=input, capture_output=True, text=True, timeout=timeout,
        )

    def popen(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args), cwd=REPO, env=cli_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def json(self, *args: str) -> Any:
        done = self(*args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture
def cli(db_url: str, output_dir: Path) -> CLI:
    return CLI(db_url, output_dir)


def workflow_path(name: str) -> str:
    return str(TEST_WORKFLOWS / f"{name}.py")


# -- helpers added for the issue-2 suite ------------------------------------------------------


class EventReader:
    """Reads a subprocess's stdout (one JSON event per line) on a thread, so a test can wait for
    a given event with a deadline instead of blocking on readline forever."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        import queue
        import threading

        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.other: list[str] = []  # lines that are not JSON (there should be none)
        self._q: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._eof = False
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line)
        self._q.put(None)

    def _next(self, deadline: float) -> dict[str, Any] | None:
        """The next event, None at end of output; AssertionError when the deadline passes."""
        import queue
        import time

        while True:
            if self._eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for events; got {len(self.events)} so far")
            try:
                line = self._q.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._eof = True
                return None
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                self.other.append(line)
                continue
            self.events.append(event)
            return event

    def until(self, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
        """Read events until one matches `predicate`; return it."""
        import time

        deadline = time.monotonic() + timeout
        for event in self.events:
            if predicate(event):
                return event
        while True:
            event = self._next(deadline)
            if event is None:
                raise AssertionError(f"output ended before the awaited event; last events: {self.events[-3:]}")
            if predicate(event):
                return event

    def rest(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Read to the end of the output; return every event read so far."""
        import time

        deadline = time.monotonic() + timeout
        while self._next(deadline) is not None:
            pass
        return self.events

    @property
    def run_id(self) -> str:
        return str(self.until(lambda e: True)["run_id"])


def is_event(type_: str, step: str | None = None, child: bool | None = None) -> Any:
    """Predicate for EventReader.until: an event of this type (and step; child=True: a fan-out
    child, child=False: not one)."""

    def match(e: dict[str, Any]) -> bool:
        if e["type"] != type_ or (step is not None and e["step"] != step):
            return False
        return child is None or (e["item"] is not None) == child

    return match


@pytest.fixture
def spawn(cli: CLI) -> Iterator[Any]:
    """Start `statepipe ...` in the background; every process still alive at the end of the test
    is killed and reaped, so a failing test leaves nothing running."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, **env: str) -> subprocess.Popen[str]:
        proc = cli.popen(*args, **env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def kill9(proc: subprocess.Popen[Any]) -> None:
    """kill -9 the process, reap it, and wait for what it had sent PostgreSQL to be done with."""
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    gone_from_postgres(proc.pid)


def gone_from_postgres(pid: int, timeout: float = 30) -> None:
    """Wait until the test's database has no backend left of the statepipe process `pid` (killed):
    a commit it sent just before its kill -9 is still carried out by the server, so a snapshot
    taken before its backend ends may show an instant the crash did not leave."""
    url = os.environ.get("STATEPIPE_DATABASE_URL")
    if url is None:  # a test with no database of its own
        return
    deadline = time.monotonic() + timeout
    try:
        conn = psycopg.connect(url, autocommit=True)
    except psycopg.OperationalError:  # the server is down (a test stopped it): no backend is left
        return
    with conn:
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (f"statepipe {pid}",)
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, f"process {pid}'s connections outlived it by {timeout} s"
            time.sleep(0.01)


def error_message(done: subprocess.CompletedProcess[str] | str) -> str:
    """The one user-facing error of a finished command (or of its stderr text): a single
    `statepipe: error: ...` message and no traceback. Returned with whitespace normalised (see the
    single-line test in test_cli.py for how it is laid out)."""
    stderr = done if isinstance(done, str) else done.stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.count("statepipe: error:") == 1, stderr
    text = " ".join(stderr.split())
    return text[text.index("statepipe: error:") + len("statepipe: error:"):].strip()


# -- helpers added for the issue-5 suite (rerun, feedback, fork, cache) ------------------------


def run_here(store: Store, workflow: str, env: dict[str, str] | None = None, no_cache: bool = False, **run_input: Any) -> str:
    """Create and execute a run of tests/workflows/<workflow>.py (or of a file path) in this
    process, quicker than a CLI subprocess; `env` is set only while it executes. Returns the run
    id once every event is committed; the run records the file, so the CLI can rerun it."""
    import asyncio

    from statepipe.definition.loader import load
    from statepipe.engine.runtime import Runtime

    loaded = load(workflow if workflow.endswith(".py") else workflow_path(workflow))
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    runtime = Runtime(store)
    try:
        run_id = runtime.create_run(loaded, run_input, no_cache=no_cache)
        asyncio.run(runtime.execute(run_id, loaded))
        runtime.writer.flush()
    finally:
        runtime._closing.set()  # its control listener stops; the store belongs to the fixture
        runtime.writer.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return run_id


def all_events(store: Store, run_id: str) -> list[Any]:
    return store.events_after(run_id, 0, 100_000)


def step_of(snap: Any, name: str, item: str = "") -> Any:
    """One step row (a fan-out child with `item`) of a snapshot."""
    return next(s for s in snap.steps if s.name == name and s.item == item and s.compensates is None)


# -- the HTTP server (issue 16) ---------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A real `statepipe serve` in a subprocess on a free local port; `restart()` starts it again
    on the same port (after a kill -9, say)."""

    def __init__(self, cli: CLI, *args: str, **env: str) -> None:
        self.cli, self.args, self.env = cli, args, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Server:
        import httpx

        self.proc = subprocess.Popen(
            self.cli.argv("serve", "--port", str(self.port), *self.args), cwd=REPO, env=cli_env(**self.env),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"statepipe serve exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            try:
                if httpx.get(self.url + "/api/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("statepipe serve did not answer in 30 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def restart(self) -> Server:
        self.stop(signal.SIGKILL)
        return self.start()


@pytest.fixture
def server(cli: CLI) -> Iterator[Server]:
    """`statepipe serve` with its worker, against this test's database."""
    srv = Server(cli).start()
    yield srv
    srv.stop()
