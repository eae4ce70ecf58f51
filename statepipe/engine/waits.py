"""Durable waits for a person's input (`ctx.wait_for`) and the way values reach them (`send`).

A step that asks for a value nobody has sent stops there: its attempt is recorded `suspended`,
the step waits (its row says for what), and once nothing else can run the run rests `waiting`
with no owner: no thread, process or connection is held, for days if need be, across restarts.
A value is sent by name (`statepipe send`, the client, the HTTP API), checked against the
waiting step's schema, and kept with an event; the run is then wanted again and its step runs
again from its start, `wait_for` now returning the value. So the code before a wait must be
safe to repeat (or the wait gets a step of its own). One value per name and run: a value sent
before the step asks is kept for it; a second value for a name is refused."""

from __future__ import annotations

from typing import Any

from statepipe.errors import ConflictError, InputError, OutputNotSerializable
from statepipe.store.records import NewEvent
from statepipe.store.store import Store

FINISHED = ("succeeded", "failed", "cancelled")


class AwaitingInput(BaseException):  # noqa: N818 - a signal to the engine, not an error
    """Raised by ctx.wait_for when its value has not been sent: the attempt stops, the step
    waits. A BaseException, so a step's own `except Exception` does not swallow it."""

    def __init__(self, name: str, schema: dict[str, Any] | None, timeout: float | None) -> None:
        super().__init__(f"waiting for input {name!r}")
        self.name, self.schema, self.timeout = name, schema, timeout


def schema_json(schema: Any) -> dict[str, Any] | None:
    """A JSON Schema from what wait_for takes: a pydantic model class or a JSON Schema dict."""
    if schema is None or isinstance(schema, dict):
        return schema
    model_schema = getattr(schema, "model_json_schema", None)
    if model_schema is None:
        raise TypeError(f"wait_for schema must be a pydantic model or a JSON Schema dict, not {schema!r}")
    result: dict[str, Any] = model_schema()
    return result


def check(value: Any, schema: dict[str, Any] | None, name: str) -> None:
    """Refuse a value its wait's schema does not admit, naming where it fails."""
    if schema is None:
        return
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        raise InputError(f"value for {name!r} refused{f' at {where}' if where else ''}: {error.message}")


def validated(value: Any, schema: Any, name: str) -> Any:
    """What wait_for returns: the value, as the schema's pydantic model when it is one."""
    check(value, schema_json(schema), name)
    if schema is not None and not isinstance(schema, dict):
        return schema.model_validate(value)
    return value


def send(store: Store, run_id: str, name: str, value: Any) -> dict[str, Any]:
    """Deliver `value` to the run's wait named `name` (now, or whenever a step asks). Only
    delivers: executing the run after is the caller's choice (here, or a worker)."""
    from statepipe.engine.outputs import encode

    if not name or not isinstance(name, str) or len(name) > 200:
        raise InputError("an input's name is 1 to 200 characters")
    snap = store.snapshot(run_id)
    run = snap.run
    if run.state in FINISHED:
        raise ConflictError(f"run {run_id} is {run.state}: it waits for nothing any more")
    waiting = [s for s in snap.steps if s.state == "waiting" and s.waiting_for and s.waiting_for.get("name") == name]
    for s in waiting:
        check(value, s.waiting_for.get("schema") if s.waiting_for else None, name)
    try:
        text = encode(value, f"value for {name!r} refused", "value")
    except OutputNotSerializable as exc:
        raise InputError(str(exc)) from None
    store.send_input(run_id, name, text, NewEvent("input_sent", data={"name": name, "value": value}))
    labels = [f"{s.name}[{s.item}]" if s.item else s.name for s in waiting]
    return {
        "run_id": run_id, "name": name, "waiting": labels,
        "note": f"delivered to {', '.join(labels)}" if labels else "kept: no step waits for it yet",
    }
