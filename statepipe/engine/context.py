"""What a step function sees of the engine: who it is, and how to report progress and output."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from statepipe.engine.outputs import encode
from statepipe.errors import ChildRunFailed
from statepipe.store.records import NewEvent


class StepInterrupted(Exception):
    """Raised inside a step at its next emit/checkpoint once the run is stopping (pause, cancel,
    shutdown): the attempt is abandoned and runs again later."""


@dataclass
class StepContext:
    run_id: str
    step: str
    item: str | None
    attempt: int
    input: dict[str, Any]
    _publish: Callable[[NewEvent], None] = field(repr=False)
    _stopped: bool = field(default=False, repr=False)  # set by the engine; a step thread only reads it
    dry_run: bool = False  # LLM calls are answered by the simulated model
    last_error: str | None = None  # why the previous attempt failed: a repair prompt can quote it
    feedback: str | None = None  # what the user asked of this step (rerun --feedback, statepipe feedback)
    usage: list[dict[str, Any]] = field(default_factory=list, repr=False)  # one entry per LLM call
    emitted: int = 0  # output chunks sent: a retry after any marks this attempt's text abandoned
    _inputs: dict[str, Any] = field(default_factory=dict, repr=False)  # values sent to the run, by name
    _held: str = field(default="", repr=False)  # half a surrogate pair waiting for its other half (emit)
    _spawn: Callable[[Any, dict[str, Any], str], str] | None = field(default=None, repr=False)  # see run_workflow

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts of this step in this run: pass it to external APIs so a
        retried attempt does not repeat a side effect."""
        return f"{self.run_id}:{self.step}:{self.item or ''}"

    @property
    def stopping(self) -> bool:
        return self._stopped

    def checkpoint(self) -> None:
        """A safe place to stop: raises StepInterrupted when the run is being stopped."""
        if self._stopped:
            raise StepInterrupted(f"step {self.step} interrupted")

    def _event(self, type_: str, data: dict[str, Any]) -> None:
        self.checkpoint()
        self._publish(NewEvent(type_, self.step, self.item, self.attempt, data))

    def progress(self, message: str, **data: Any) -> None:
        """A human-readable progress line (shown as the step's last line)."""
        self._event("progress", {"message": str(message), **data})

    def emit(self, text: str) -> None:
        """A chunk of partial output, such as streamed tokens. A chunk ending in the first half of
        a surrogate pair keeps that half back for the next chunk, so a character sent in two
        pieces is stored whole (store.storable's rule joins halves that meet)."""
        text = self._held + str(text)
        self._held = ""
        if text and "\ud800" <= text[-1] <= "\udbff":
            self._held, text = text[-1], text[:-1]
        if text:
            self._event("output", {"text": text})
            self.emitted += 1

    def flush_held(self) -> None:
        """The attempt ended with half a character held back: sent as it is (stored as U+FFFD)."""
        if self._held:
            self._publish(NewEvent("output", self.step, self.item, self.attempt, {"text": self._held}))
            self._held = ""

    def partial(self, value: Any) -> None:
        """A completed piece of structured output: data, so it must be storable as an output
        must (refused here, in the step, where the fault is)."""
        encode(value, f"step {self.step}" + (f"[{self.item}]" if self.item else ""), "partial value")
        self._event("partial", {"value": value})

    def wait_for(self, name: str, *, schema: Any = None, timeout: float | None = None) -> Any:
        """The value a person sends under `name` (`statepipe send RUN NAME ...`), checked
        against `schema` (a pydantic model, whose instance is returned, or a JSON Schema). Not
        sent yet: the step stops here and waits, durably and holding nothing; once the value
        comes it runs again from its start and this returns it, so code before the wait must be
        safe to repeat. `timeout` seconds without a value fail the step (retried per its policy)."""
        from statepipe.engine.waits import AwaitingInput, schema_json, validated

        self.checkpoint()
        if name in self._inputs:
            return validated(self._inputs[name], schema, name)
        raise AwaitingInput(name, schema_json(schema), timeout)

    def run_workflow(self, workflow: Any, input: dict[str, Any] | None = None, *, key: str | None = None) -> Any:
        """Run another workflow (a name, found as the CLI finds it, or a Workflow object defined
        in a workflow file) as a child of this run and return its result; raises ChildRunFailed
        when it fails. The child is its own run (listed, inspected, linked both ways); the step
        waits for it as for input, holding nothing, and runs again when it ends, this call then
        returning its result. It is started once per step, item and `key` (default: the
        workflow's name): a parent resumed after a crash finds its child, never starts another."""
        from statepipe.engine.waits import AwaitingInput

        name = workflow if isinstance(workflow, str) else getattr(workflow, "name", str(workflow))
        ident = (f"{self.step}[{self.item}]" if self.item else self.step) + "/" + (key or name)
        signal = f"child:{ident}"
        if signal in self._inputs:
            outcome = self._inputs[signal]
            if outcome.get("state") == "succeeded":
                return outcome.get("result")
            raise ChildRunFailed(outcome.get("run_id", "?"), outcome.get("workflow", name), outcome.get("state", "?"), outcome.get("error"))
        self.checkpoint()
        if self._spawn is None:
            raise RuntimeError("run_workflow is available to steps executed by statepipe")
        self._spawn(workflow, dict(input or {}), ident)
        raise AwaitingInput(signal, None, None)

    def record_usage(self, call: dict[str, Any]) -> None:
        """Keep one LLM call's tokens, cost and latency: they are stored with this attempt."""
        self.usage.append(call)

    log = progress


@dataclass(frozen=True)
class HookContext:
    """What a workflow hook receives as its first argument (its second is the event's metadata)."""

    run_id: str
    workflow: str
    input: dict[str, Any]
