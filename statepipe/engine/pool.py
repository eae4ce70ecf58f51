"""Process steps: a step with `process=True` runs in a process of a pool its runtime owns, so
CPU-bound steps run in parallel (threads share one interpreter lock), and its timeout, a cancel or
`pause --now` stop it for certain: a thread cannot be killed, a process can.

Not concurrent.futures.ProcessPoolExecutor: it cannot stop one task, only the whole pool, and a
worker that dies breaks every task in flight (BrokenProcessPool). Here each process runs one
attempt at a time over a pipe of its own; killing or losing it fails that attempt alone, and the
next attempt that needs a process gets a new one.

Processes come from multiprocessing's forkserver (spawn where there is none): forking the run's
process itself would copy its threads' state (the writer, the LISTEN connection, the database
pool) mid-operation. A process imports the workflow's file and looks the step up by name; the
step's arguments, its events and its output cross the pipe as JSON-compatible values.

A process dies with the run's process: it exits when its pipe closes, and on Linux the kernel
kills it once its parent, the forkserver, exits, which the forkserver does when the run's process
dies (PR_SET_PDEATHSIG): so a kill -9 of `statepipe run` leaves no step running."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.forkserver
import os
import pickle
import queue
import signal
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from statepipe.definition.loader import load_ref
from statepipe.definition.workflow import Step, Workflow
from statepipe.engine.context import StepContext, StepInterrupted
from statepipe.engine.outputs import decode, encode
from statepipe.engine.threads import inbox, settle
from statepipe.engine.tracebacks import carry, user_traceback, where
from statepipe.errors import DefinitionError, NonRetryable, StepProcessDied, StepTimeout
from statepipe.store.records import NewEvent

log = logging.getLogger("statepipe.pool")

GRACE_S = 2.0  # from SIGTERM (the step unwinds, its finally blocks run) to SIGKILL
PR_SET_PDEATHSIG = 1  # linux/prctl.h

# Process.start() polls every child of this process (multiprocessing's _cleanup), and join() of a
# forkserver child reads its exit code from a pipe once: two threads doing either at a time could
# take each other's exit code
_REAPING = threading.Lock()


def default_size() -> int:
    """The CPUs this process may run on: a container's or taskset's share, not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def workflow_ref(wf: Workflow, step: Step) -> str:
    """Where a step's process finds the workflow ("path.py:object", as loader.Loaded.ref): the
    file of the module that defines the step's function, and the workflow's name there."""
    module = sys.modules.get(step.fn.__module__)
    path = getattr(module, "__file__", None)
    name = next((k for k, v in vars(module).items() if v is wf), None) if module is not None else None
    if not path or name is None:
        raise DefinitionError(
            f"workflow {wf.name}, step {step.name}: a process step needs its workflow at the top level of a file, "
            "which its process imports"
        )
    return f"{path}:{name}"


@dataclass(frozen=True)
class _Job:
    """One attempt, as its process receives it."""

    ref: str
    step: str
    kwargs: dict[str, Any]  # without `ctx`, and without parameters left to their defaults
    wants_ctx: bool
    context: dict[str, Any]  # the StepContext's fields
    env: dict[str, str]  # the run's process's, as a thread step would see them
    cwd: str


class _Attempt:
    """An attempt in flight: the context its events and usage go to, and the future its outcome settles."""

    def __init__(self, ctx: StepContext) -> None:
        loop = asyncio.get_running_loop()
        self.ctx = ctx
        self.future: asyncio.Future[Any] = loop.create_future()
        self._box = inbox(loop)

    def finish(self, result: Any, exc: BaseException | None) -> None:
        self._box.put(settle, self.future, result, exc)


class _Worker:
    """One process of the pool, and the thread that reads what it says."""

    def __init__(self, process: multiprocessing.process.BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.attempt: _Attempt | None = None
        self.stopping = False  # being killed: what it still says is dropped
        self.exited = threading.Event()
        threading.Thread(target=self._read, name="statepipe-process-reader", daemon=True).start()

    @property
    def usable(self) -> bool:
        return not self.stopping and not self.exited.is_set()

    def begin(self, attempt: _Attempt, job: _Job) -> None:
        self.attempt = attempt
        try:
            self.conn.send(job)
        except OSError:  # it has just died: its reader says how
            pass

    def _read(self) -> None:
        conn, sentinel = self.conn, self.process.sentinel
        while True:
            ready = multiprocessing.connection.wait([conn, sentinel])
            if conn not in ready:
                break
            try:
                raw = conn.recv_bytes()
            except (EOFError, OSError):
                break
            try:
                self._on(pickle.loads(raw))
            except Exception:  # a message that cannot be read or published must not end the reader
                log.exception("a step process's message was dropped")
        with _REAPING:
            self.process.join()
        conn.close()
        attempt, self.attempt = self.attempt, None
        if attempt is not None:  # when being killed, the attempt was already given up
            attempt.finish(None, StepProcessDied(f"the step's process died: {_exit_status(self.process.exitcode)}"))
        self.exited.set()

    def _on(self, message: tuple[Any, ...]) -> None:
        attempt = self.attempt
        if attempt is None or self.stopping:
            return
        kind, *rest = message
        ctx = attempt.ctx
        if kind == "event":
            type_, data = rest
            if type_ == "output":
                ctx.emitted += 1
            ctx._publish(NewEvent(type_, ctx.step, ctx.item, ctx.attempt, data))
        elif kind == "usage":
            ctx.usage.append(rest[0])
        else:  # the attempt's end
            self.attempt = None
            if kind == "done":
                attempt.finish(decode(rest[0]), None)
            else:
                attempt.finish(None, _unpack(*rest))

    def terminate(self) -> None:
        """SIGTERM: the step unwinds from where it is (its finally blocks run) and the process exits."""
        self.stopping = True
        if not self.exited.is_set():
            self.process.terminate()

    def kill(self) -> None:
        """Terminate, and SIGKILL what has not exited after GRACE_S; returns once it is gone."""
        self.terminate()
        if not self.exited.wait(GRACE_S):
            self.process.kill()
            self.exited.wait()


def _exit_status(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-code} ({name})"
    return f"exited with code {code}"


class ProcessPool:
    """Up to `size` processes, each started when an attempt first needs it and replaced (started
    anew when next needed) after it is killed or dies."""

    def __init__(self, size: int | None = None) -> None:
        self.size = max(1, size or default_size())
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()
        self._waiting: deque[asyncio.Future[None]] = deque()  # attempts waiting for a process
        self._lock = threading.Lock()
        self._closed = False
        self._starting = 0  # processes being started, counted against `size`
        self._forkserver = False  # whether this pool started processes from the forkserver

    async def run(self, wf: Workflow, step: Step, kwargs: dict[str, Any], ctx: StepContext) -> Any:
        """The step's output, computed in a process. Raises what the step raised; StepTimeout
        once it outlives `step.timeout` (counted from when its process takes it up, not while
        it waits for a free one); StepProcessDied. Cancelled, it kills the process first."""
        defaults = {p.name: p.default for p in step.params if p.has_default}
        job = _Job(
            workflow_ref(wf, step), step.name,
            {k: v for k, v in kwargs.items() if k != "ctx" and not (k in defaults and v is defaults[k])},
            "ctx" in kwargs,
            {"run_id": ctx.run_id, "step": ctx.step, "item": ctx.item, "attempt": ctx.attempt, "input": ctx.input,
             "dry_run": ctx.dry_run, "last_error": ctx.last_error, "feedback": ctx.feedback, "_inputs": ctx._inputs},
            dict(os.environ), os.getcwd(),
        )
        worker = await self._acquire()
        try:
            attempt = _Attempt(ctx)
            worker.begin(attempt, job)
            try:
                return await asyncio.wait_for(asyncio.shield(attempt.future), step.timeout)
            except (TimeoutError, asyncio.CancelledError) as exc:
                attempt.future.cancel()  # whatever it still says is not this attempt's outcome
                await asyncio.shield(asyncio.to_thread(worker.kill))
                if isinstance(exc, TimeoutError):
                    raise StepTimeout(f"timed out after {step.timeout:g}s") from None
                raise
        finally:
            self._release(worker)

    async def _acquire(self) -> _Worker:
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                while self._idle:
                    worker = self._idle.pop()
                    if worker.usable:
                        return worker
                    self._workers.discard(worker)  # died while idle: its place is free
                if len(self._workers) + self._starting < self.size:
                    self._starting += 1
                    break
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiting.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                with self._lock:
                    woken = waiter not in self._waiting
                    if not woken:
                        self._waiting.remove(waiter)
                if woken:  # its turn passes to the next in line
                    self._wake_one()
                raise
        starting = asyncio.ensure_future(asyncio.to_thread(self._start))
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:  # the process still starts: it is the pool's, for the next attempt
            starting.add_done_callback(self._started_for_nobody)
            raise
        except BaseException:
            self._wake_one()
            raise

    def _start(self) -> _Worker:
        try:
            mp = self._context()
            parent_end, child_end = mp.Pipe()
            process = mp.Process(target=_serve, args=(child_end,), name="statepipe-step", daemon=True)
            with _REAPING:
                process.start()
            child_end.close()
        except BaseException:
            with self._lock:
                self._starting -= 1
            raise
        worker = _Worker(process, parent_end)
        with self._lock:
            self._starting -= 1
            self._workers.add(worker)
        return worker

    def _started_for_nobody(self, starting: asyncio.Future[_Worker]) -> None:
        if starting.cancelled() or starting.exception() is not None:
            self._wake_one()
        else:
            self._release(starting.result())

    def _context(self) -> multiprocessing.context.ForkServerContext | multiprocessing.context.SpawnContext:
        if "forkserver" not in multiprocessing.get_all_start_methods():
            return multiprocessing.get_context("spawn")
        mp = multiprocessing.get_context("forkserver")
        if not self._forkserver:
            self._forkserver = True
            _FORKED.add(self)
            mp.set_forkserver_preload([__name__])  # its processes start with statepipe imported: in milliseconds
        return mp

    def _release(self, worker: _Worker) -> None:
        with self._lock:
            if worker.usable and not self._closed:
                self._idle.append(worker)
            else:
                self._workers.discard(worker)
        self._wake_one()

    def _wake_one(self) -> None:
        with self._lock:
            while self._waiting:
                waiter = self._waiting.popleft()
                if not waiter.done():
                    break
            else:
                return
        waiter.get_loop().call_soon_threadsafe(_wake, waiter)

    def close(self) -> None:
        """Stop every process; then, unless another pool of this process still has some, the
        forkserver, which reaped them: their CPU time is then counted in this process's
        RUSAGE_CHILDREN, as a thread's would be, and no process is left behind."""
        with self._lock:
            self._closed = True
            workers = list(self._workers)
            self._workers.clear()
            self._idle.clear()
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.kill()
        _FORKED.discard(self)
        stop = getattr(multiprocessing.forkserver._forkserver, "_stop", None)
        with _REAPING:  # not while another pool starts a process
            if self._forkserver and stop is not None and not any(p._workers or p._starting for p in _FORKED):
                stop()


_FORKED: weakref.WeakSet[ProcessPool] = weakref.WeakSet()  # open pools that took processes from the forkserver


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _unpack(
    whole: bytes | None, parts: bytes | None, name: str, text: str, trace: str | None, at: str | None,
) -> BaseException:
    """The step's exception as raised in its process, of its own class (retry_on, never_retry
    and the engine's own signals, such as wait_for's, test classes): unpickled whole; or, for a
    class whose __init__ its args do not fit, made without calling it; else an Exception
    subclass of the same name with the same message."""
    error: Any = None
    try:
        if whole is not None:
            error = pickle.loads(whole)
    except Exception:  # noqa: BLE001 - rebuilt from its parts below
        error = None
    try:
        if not isinstance(error, BaseException) and parts is not None:
            cls, args, state = pickle.loads(parts)
            error = cls.__new__(cls)
            error.args = args
            error.__dict__.update(state)
    except Exception:  # noqa: BLE001 - a class this process cannot import: its name and message remain
        error = None
    if not isinstance(error, BaseException):
        error = type(name, (Exception,), {})(text)
    carry(error, trace, at)
    return error


# -- in the step's process ----------------------------------------------------------------------


def _serve(conn: Connection) -> None:
    """A pool process: run the attempts the pipe brings, one at a time, until the pipe closes."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the run decides
    child = _Child(conn)
    signal.signal(signal.SIGTERM, child.on_sigterm)
    threading.Thread(target=child.listen, name="statepipe-pipe", daemon=True).start()
    while True:
        child.run(child.jobs.get())


def _die_with_parent() -> None:
    """On Linux, the kernel kills this process when its parent, the forkserver, exits. The
    forkserver exits once every holder of its 'alive' pipe is gone, so this process lets go of
    its copy: then the run's process dying is enough."""
    server = multiprocessing.forkserver._forkserver
    alive = getattr(server, "_forkserver_alive_fd", None)
    if alive is None:  # not a forkserver's child
        return
    os.close(alive)
    setattr(server, "_forkserver_alive_fd", None)  # noqa: B010 - private, hence not in the type stubs
    if sys.platform != "linux":
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def _exit_by_sigterm() -> None:
    """End as SIGTERM ends a process, so its exit status says what happened."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


class _ProcessContext(StepContext):
    """A step's context in its process: LLM usage goes to the run's process as it is recorded,
    so an attempt killed mid-way keeps what it spent."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None], **fields: Any) -> None:
        super().__init__(_publish=lambda event: send(("event", event.type, event.data)), _spawn=_no_child_runs, **fields)
        self._send = send

    def record_usage(self, call: dict[str, Any]) -> None:
        super().record_usage(call)
        self._send(("usage", call))


def _no_child_runs(workflow: Any, run_input: dict[str, Any], key: str) -> str:
    """ctx.run_workflow in a process: a child run is started by the run's process, which this is not."""
    raise NonRetryable("ctx.run_workflow cannot start a child run from a process step (process=True); call it from a step on a thread")


class _Child:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.ctx: _ProcessContext | None = None
        self.attempt: object | None = None  # the running attempt's token (see _sender)
        self.in_step = False
        self.mid_send = False  # the main thread is writing a message
        self._sending = threading.Lock()  # a step's own threads may report too

    def listen(self) -> None:
        """Hand attempts to the main thread; the pipe closing means the run's process is gone."""
        while True:
            try:
                job = self.conn.recv()
            except (EOFError, OSError):
                os._exit(0)
            self.jobs.put(job)

    def send(self, message: tuple[Any, ...]) -> None:
        main = threading.current_thread() is threading.main_thread()
        with self._sending:
            self.mid_send = main
            try:
                self.conn.send(message)
            finally:
                self.mid_send = False
        if main and self.in_step and self.ctx is not None:
            self.ctx.checkpoint()  # a SIGTERM that came mid-message takes effect now

    def on_sigterm(self, signum: int, frame: Any) -> None:
        """The run stops this attempt (its timeout, a cancel, pause --now, shutdown): the step
        unwinds from where it is, and the process exits. A message being written is finished
        first, so the pipe stays readable."""
        if self.ctx is not None:
            self.ctx._stopped = True
        if not self.in_step:
            _exit_by_sigterm()
        elif not self.mid_send:
            raise StepInterrupted("stopped by the run")

    def run(self, job: _Job) -> None:
        if os.environ != job.env:
            os.environ.clear()
            os.environ.update(job.env)
        if os.getcwd() != job.cwd:
            os.chdir(job.cwd)
        self.attempt = attempt = object()
        ctx = self.ctx = _ProcessContext(self._sender(attempt), **job.context)
        message: tuple[Any, ...]
        try:
            fn = load_ref(job.ref).workflow[job.step].fn
            kwargs = {**job.kwargs, "ctx": ctx} if job.wants_ctx else job.kwargs
            self.in_step = True
            try:
                value = fn(**kwargs)
            finally:
                self.in_step = False
            message = ("done", encode(value, f"step {ctx.step}" + (f"[{ctx.item}]" if ctx.item else "")))
        except BaseException as exc:  # noqa: BLE001 - the attempt's failure, classified by the run as a thread step's
            if ctx._stopped:
                _exit_by_sigterm()
            message = ("failed", *_pack(exc), user_traceback(exc), where(exc))
        self.ctx = self.attempt = None
        self.send(message)
        if ctx._stopped:  # a SIGTERM that came mid-message: the run is killing this process
            _exit_by_sigterm()

    def _sender(self, attempt: object) -> Callable[[tuple[Any, ...]], None]:
        """What one attempt's context sends through: nothing once the attempt is over (a thread
        the step started may outlive it), so the next attempt's events stay its own."""

        def send(message: tuple[Any, ...]) -> None:
            if self.attempt is attempt:
                self.send(message)

        return send


def _pack(exc: BaseException) -> tuple[bytes | None, bytes | None, str, str]:
    """The exception pickled whole, and as (class, args, attributes): see _unpack."""
    packed: list[bytes | None] = []
    for value in (exc, (type(exc), exc.args, vars(exc))):
        try:
            packed.append(pickle.dumps(value))
        except Exception:  # noqa: BLE001 - a local class, an unpicklable attribute: its name and message still cross
            packed.append(None)
    return packed[0], packed[1], type(exc).__name__, str(exc)
