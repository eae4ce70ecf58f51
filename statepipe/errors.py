"""Error types. The CLI maps each to a one-line message and an exit code (documented in the README)."""

from __future__ import annotations


class StatepipeError(Exception):
    """Base of every error a user can cause or fix; the CLI prints it without a traceback."""

    exit_code = 2


class DefinitionError(StatepipeError):
    """A workflow definition is invalid: cycle, unknown or duplicate step, bad signature."""

    exit_code = 2


class InputError(StatepipeError):
    """Run input is malformed or incomplete."""

    exit_code = 2


class ConfigError(StatepipeError):
    """Something the environment must provide is missing or unfit, such as a model's API key,
    or a database whose encoding has no characters for the text a run produced."""

    exit_code = 2


class NotFoundError(StatepipeError):
    """An unknown workflow or run id."""

    exit_code = 3


class ConflictError(StatepipeError):
    """The request clashes with a run's state: it is finished, or another process owns it."""

    exit_code = 4


class DatabaseUnavailable(StatepipeError):
    """PostgreSQL cannot be reached or started."""

    exit_code = 5


class OutputNotSerializable(StatepipeError):
    """A step returned a value that cannot be stored as JSON."""


class UnstorableValue(OutputNotSerializable):
    """Data holding text PostgreSQL cannot store, or nested too deep (store.storable's rule).
    Unlike a value of the wrong type, a step may produce it by chance (a model's reply): retried."""


class ClaimLost(StatepipeError):
    """Another worker claimed the fan-out child this one held (its lease ran out): this one's
    attempt is not written."""

    exit_code = 4

    def __init__(self, run_id: str, name: str, item: str) -> None:
        super().__init__(f"run {run_id}: step {name}[{item}] was claimed by another worker")
        self.run_id, self.name, self.item = run_id, name, item


class LeaseLost(StatepipeError):
    """Another executor took the run over; this one must stop writing."""

    exit_code = 4

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id}: another executor took it over")
        self.run_id = run_id


class IllegalTransition(StatepipeError):
    """A state change its lifecycle does not allow; never written to the store."""

    exit_code = 4


class StepTimeout(Exception):
    """A step ran longer than its timeout."""


class StepProcessDied(StatepipeError):
    """The process running a `process=True` step died mid-attempt (a signal, os._exit, the OOM
    killer): that attempt fails, retried per the step's policy; the run's process lives on."""


class ChildRunFailed(Exception):
    """A child workflow (ctx.run_workflow) ended without succeeding: its step fails with it."""

    def __init__(self, run_id: str, workflow: str, state: str, error: str | None) -> None:
        super().__init__(f"child run {run_id} ({workflow}) {state}" + (f": {error}" if error else ""))
        self.run_id, self.workflow, self.state, self.error = run_id, workflow, state, error


class NonRetryable(Exception):
    """Raise from a step to fail it at once, whatever its retry policy says."""


# Exit codes that are not carried by an error type.
EXIT_RUN_FAILED = 1
EXIT_RUN_CANCELLED = 6
EXIT_INTERRUPTED = 130


class RunFailed(StatepipeError):
    """A run the caller waited for (`RunHandle.result`, `Workflow.run`) failed. It carries where
    and why, so a script can report or handle it without reading the store: `step` (and `item`,
    for a fan-out child) that failed, its `error` and the user `traceback` of its last attempt
    (None when the run failed as a whole, e.g. its timeout); `str()` is the run's error."""

    exit_code = EXIT_RUN_FAILED

    def __init__(
        self, run_id: str, message: str, step: str | None = None, item: str | None = None,
        error: str | None = None, traceback: str | None = None,
    ) -> None:
        super().__init__(message)
        self.run_id, self.step, self.item = run_id, step, item
        self.error = error if error is not None else message
        self.traceback = traceback


class RunCancelled(StatepipeError):
    """A run the caller waited for was cancelled: it has no result, since `resume` refuses a
    cancelled run (`rerun` or `fork` runs its steps again)."""

    exit_code = EXIT_RUN_CANCELLED

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} was cancelled")
        self.run_id = run_id
