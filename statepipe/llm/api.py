"""Calling a model from a step in one line.

    text = llm.text(ctx, "Summarise: ...", model="gpt-4o-mini")        # tokens stream live
    outline = llm.ndjson(ctx, prompt, item=Section, model=...)          # items appear one by one
    plan = llm.json(ctx, prompt, schema=Plan, model=...)                # fields/elements as they close

A reply that breaks its schema raises InvalidReply naming the field; the step's next attempt
(llm steps retry by default) sends the error back to the model so it can repair its answer.

A reply cut at the token limit (finish_reason "length") is kept and marked truncated in the
attempt's usage; `on_truncated="retry"` fails the attempt instead, and the next one asks for a
shorter reply."""

from __future__ import annotations

import json as jsonlib
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel, ValidationError

from statepipe.engine.context import StepContext
from statepipe.errors import StatepipeError
from statepipe.llm.backends import Shape
from statepipe.llm.calls import ReplyTruncated, call
from statepipe.llm.parsing import JSONStreamParser, NDJSONParser

Schema = type[BaseModel] | dict[str, Any]


class InvalidReply(StatepipeError):
    """The model's reply does not fit the schema (retried with the error fed back)."""

    exit_code = 1


def _messages(ctx: StepContext, prompt: str | list[dict[str, Any]], system: str | None, instructions: str | None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    system_text = "\n\n".join(t for t in (system, instructions) if t)
    if system_text:
        messages.append({"role": "system", "content": system_text})
    if isinstance(prompt, str):
        messages.append({"role": "user", "content": prompt})
    else:
        messages.extend(prompt)
    if ctx.last_error and "InvalidReply" in ctx.last_error:
        messages.append({
            "role": "user",
            "content": f"Your previous reply was rejected: {ctx.last_error.split(': ', 1)[-1]}\n"
            "Reply again from the start, following the required format exactly.",
        })
    elif ctx.last_error and ReplyTruncated.__name__ in ctx.last_error:
        messages.append({
            "role": "user",
            "content": "Your previous reply was cut off at the length limit. Reply again from the start, more briefly.",
        })
    return messages


def _params(temperature: float | None, max_tokens: int | None, extra: dict[str, Any]) -> dict[str, Any]:
    params = dict(extra)
    if temperature is not None:
        params["temperature"] = temperature
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    return params


def text(
    ctx: StepContext,
    prompt: str | list[dict[str, Any]],
    *,
    model: str,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    on_truncated: str = "keep",
    **params: Any,
) -> str:
    """The whole reply; every token is an `output` event of this attempt as it arrives."""
    return _plain(ctx, prompt, model, system, _params(temperature, max_tokens, params), ctx.emit, on_truncated)


def _plain(
    ctx: StepContext, prompt: str | list[dict[str, Any]], model: str, system: str | None,
    params: dict[str, Any], on_delta: Callable[[str], None], on_truncated: str,
) -> str:
    return call(ctx, _messages(ctx, prompt, system, None), model=model, params=params, on_delta=on_delta, on_truncated=on_truncated).text


def stream(
    ctx: StepContext,
    prompt: str | list[dict[str, Any]],
    *,
    model: str,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    on_truncated: str = "keep",
    **params: Any,
) -> Iterator[str]:
    """The reply's deltas, for a step that acts on them as they come (each also an event)."""
    import queue
    import threading

    pieces: queue.SimpleQueue[str | BaseException | None] = queue.SimpleQueue()

    def run() -> None:
        def deliver(piece: str) -> None:
            ctx.emit(piece)
            pieces.put(piece)

        try:
            _plain(ctx, prompt, model, system, _params(temperature, max_tokens, params), deliver, on_truncated)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming step, which raises it
            pieces.put(exc)
        else:
            pieces.put(None)

    threading.Thread(target=run, daemon=True, name="statepipe-llm-stream").start()
    while True:
        piece = pieces.get()
        if piece is None:
            return
        if isinstance(piece, BaseException):
            raise piece
        yield piece


def chat(
    ctx: StepContext,
    messages: list[dict[str, Any]],
    *,
    model: str,
    tools: list[dict[str, Any]] | None = None,
    on_truncated: str = "keep",
    **params: Any,
) -> dict[str, Any]:
    """A raw chat turn with tools/function calling passed through: {"content", "tool_calls",
    "finish_reason"}, tool call arguments parsed from JSON."""
    extra = dict(params)
    if tools:
        extra["tools"] = tools
    reply = call(ctx, _messages(ctx, messages, None, None), model=model, params=extra, shape=Shape("tool" if tools else "text"),
                 on_delta=ctx.emit, on_truncated=on_truncated)
    calls = []
    for tc in reply.tool_calls:
        try:
            arguments = jsonlib.loads(tc["arguments"] or "{}")
        except jsonlib.JSONDecodeError as exc:
            raise InvalidReply(f"tool call {tc['name']}: arguments are not JSON ({exc.msg})") from exc
        calls.append({"id": tc["id"], "name": tc["name"], "arguments": arguments})
    return {"content": reply.text, "tool_calls": calls, "finish_reason": reply.finish_reason}


# -- structured output ------------------------------------------------------------------------


def json_schema(schema: Schema) -> dict[str, Any]:
    return schema.model_json_schema() if isinstance(schema, type) and issubclass(schema, BaseModel) else schema


def validate(schema: Schema, value: Any, where: str = "reply") -> Any:
    """The value as the schema reads it (pydantic models: their JSON form), or InvalidReply
    naming the first field at fault."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        try:
            return schema.model_validate(value).model_dump(mode="json")
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "(root)"
            raise InvalidReply(f"{where}: field '{field}': {err['msg']}") from exc
    import jsonschema  # only dict schemas need it; importing it costs every LLM workflow ~45 ms

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    if error is not None:
        field = ".".join(str(p) for p in error.absolute_path) or "(root)"
        raise InvalidReply(f"{where}: field '{field}': {error.message}")
    return value


def _describe(schema: Schema) -> str:
    return jsonlib.dumps(json_schema(schema), separators=(",", ":"))


def json(
    ctx: StepContext,
    prompt: str | list[dict[str, Any]],
    *,
    schema: Schema,
    model: str,
    system: str | None = None,
    streamed: bool = True,
    temperature: float | None = None,
    max_tokens: int | None = None,
    on_truncated: str = "keep",
    **params: Any,
) -> Any:
    """One JSON document fitting `schema`. Streamed (default): each element of a top-level array
    and each top-level field is a `partial` event the moment it closes. `streamed=False` asks for
    JSON mode and validates at the end."""
    instructions = f"Reply with one JSON document and nothing else. It must match this JSON Schema: {_describe(schema)}"
    messages = _messages(ctx, prompt, system, instructions)
    extra = _params(temperature, max_tokens, params)
    shape = Shape("json", json_schema(schema))
    if not streamed:
        extra.setdefault("response_format", {"type": "json_object"})
        reply = call(ctx, messages, model=model, params=extra, shape=shape, on_truncated=on_truncated)
        try:
            value = jsonlib.loads(reply.text)
        except jsonlib.JSONDecodeError as exc:
            raise InvalidReply(f"reply is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
        return validate(schema, value)
    parser = JSONStreamParser()

    def on_delta(piece: str) -> None:
        ctx.emit(piece)
        for done in parser.feed(piece):
            ctx.partial({"path": list(done.path), "value": done.value})

    call(ctx, messages, model=model, params=extra, shape=shape, on_delta=on_delta, on_truncated=on_truncated)
    try:
        value = parser.close()
    except ValueError as exc:
        raise InvalidReply(f"reply is not a complete JSON document: {exc}") from exc
    return validate(schema, value)


def ndjson(
    ctx: StepContext,
    prompt: str | list[dict[str, Any]],
    *,
    item: Schema,
    model: str,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    on_truncated: str = "keep",
    **params: Any,
) -> list[Any]:
    """A list of objects the model writes one per line; each is validated and emitted as a
    `partial` event the moment its line completes. Lines that cannot be read are reported as
    they happen; the reply is rejected (and repaired on the next attempt) if any was bad."""
    instructions = (
        "Reply with NDJSON: one JSON object per line, no surrounding array, no prose, no code fences. "
        f"Each line must match this JSON Schema: {_describe(item)}"
    )
    parser = NDJSONParser()
    items: list[Any] = []
    problems: list[str] = []

    def take(lines: list[Any]) -> None:
        for line in lines:
            if line.error is not None:
                problems.append(f"line {line.line_number}: {line.error}")
                ctx.progress(f"line {line.line_number} could not be read: {line.error}", line=line.line_number, error=line.error)
                continue
            try:
                value = validate(item, line.value, where=f"line {line.line_number}")
            except InvalidReply as exc:
                problems.append(str(exc))
                ctx.progress(str(exc), line=line.line_number, error=str(exc))
                continue
            ctx.partial({"index": len(items), "value": value})
            items.append(value)

    def on_delta(piece: str) -> None:
        ctx.emit(piece)
        take(parser.feed(piece))

    call(ctx, _messages(ctx, prompt, system, instructions), model=model, params=_params(temperature, max_tokens, params),
         shape=Shape("ndjson", json_schema(item)), on_delta=on_delta, on_truncated=on_truncated)
    take(parser.close())
    if problems:
        raise InvalidReply(f"{len(problems)} bad line(s); first: {problems[0]}")
    if not items:
        raise InvalidReply("the reply held no JSON object lines")
    return items
