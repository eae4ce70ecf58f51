"""Where replies come from: any OpenAI-compatible endpoint through the `openai` client, or the
simulated model behind `--dry-run`. Both stream text deltas and end with a Reply."""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from statepipe.llm.models import ModelConfig

SIMULATED = "simulated"


@dataclass
class Reply:
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


class Transient(Exception):
    """A failure worth trying again (429, 5xx, a dropped connection); carries the server's
    Retry-After hint in seconds when it gave one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Refused(Exception):
    """A failure no retry fixes: bad key, unknown model, malformed request."""


@dataclass(frozen=True)
class Shape:
    """What the simulated model should produce: plain text, a JSON document, NDJSON lines."""

    kind: str = "text"  # text, json, ndjson, tool
    schema: dict[str, Any] | None = None


# -- OpenAI-compatible ------------------------------------------------------------------------

_clients: dict[tuple[str | None, str | None, float], Any] = {}
_clients_lock = threading.Lock()


def client(cfg: ModelConfig) -> Any:
    import openai

    key = (cfg.url(), cfg.key(), cfg.timeout)
    with _clients_lock:
        if key not in _clients:
            # our own retries, limits and fallbacks apply: the client's would hide attempts
            _clients[key] = openai.OpenAI(base_url=cfg.url(), api_key=cfg.key() or "unset", max_retries=0, timeout=cfg.timeout)
        return _clients[key]


def _retry_after(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def openai_stream(cfg: ModelConfig, messages: list[dict[str, Any]], params: dict[str, Any]) -> Iterator[str | Reply]:
    import openai

    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    try:
        stream = client(cfg).chat.completions.create(
            model=cfg.name, messages=messages, stream=True, stream_options={"include_usage": True}, **{**cfg.extra, **params}
        )
        pairs = _SurrogatePairs()
        reply = Reply("", cfg.name)
        for chunk in stream:
            if chunk.usage is not None:
                reply.prompt_tokens = chunk.usage.prompt_tokens or 0
                reply.completion_tokens = chunk.usage.completion_tokens or 0
            if chunk.model:
                reply.model = chunk.model
            for choice in chunk.choices:
                delta = choice.delta
                piece = pairs.feed(delta.content or "")
                if piece:
                    text.append(piece)
                    yield piece
                for tc in delta.tool_calls or []:
                    slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                    slot["id"] = tc.id or slot["id"]
                    if tc.function is not None:
                        slot["name"] += tc.function.name or ""
                        slot["arguments"] += tc.function.arguments or ""
                if choice.finish_reason:
                    reply.finish_reason = choice.finish_reason
        if pairs.held:
            text.append(pairs.held)
            yield pairs.held
        if reply.finish_reason is None:
            # a body that is not chunked reads as complete however early the server closed it
            raise Transient(f"{cfg.name}: stream ended after {_received(text, calls)} characters without a finish reason")
        reply.text = "".join(text)
        reply.tool_calls = [{**c, "arguments": _paired(c["arguments"])} for _, c in sorted(calls.items())]
        yield reply
    except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as exc:
        received = _received(text, calls)
        cut = f"stream cut after {received} characters: " if received else ""
        raise Transient(f"{cfg.name}: {cut}{_describe(exc)}", _retry_after(exc)) from exc
    except openai.APIStatusError as exc:
        if exc.status_code in (408, 409) or exc.status_code >= 500:
            raise Transient(f"{cfg.name}: {_describe(exc)}", _retry_after(exc)) from exc
        raise Refused(f"{cfg.name}: {_describe(exc)}") from exc


def _received(text: list[str], calls: dict[int, dict[str, Any]]) -> int:
    return sum(map(len, text)) + sum(len(c["arguments"]) for c in calls.values())


def _paired(text: str) -> str:
    """Surrogate pairs joined into the characters they encode; a lone half stays as it is."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


class _SurrogatePairs:
    """Deltas with an astral character's UTF-16 halves in separate chunks (JSON escapes such as
    "\\ud83d" then "\\ude00") made whole: like an incremental UTF-8 decoder holding an incomplete
    sequence, a trailing high surrogate waits for the next delta."""

    def __init__(self) -> None:
        self.held = ""

    def feed(self, piece: str) -> str:
        if not piece:
            return ""
        piece = _paired(self.held + piece)
        self.held = ""
        if "\ud800" <= piece[-1] <= "\udbff":
            piece, self.held = piece[:-1], piece[-1]
        return piece


def _describe(exc: Any) -> str:
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    text = message or str(exc).splitlines()[0]
    return f"HTTP {status}: {text}" if status else text


# -- simulated --------------------------------------------------------------------------------

_WORDS = (  # noqa: SIM905 - a sentence reads better than a list of 33 quoted words
    "the plan holds steady while each part finds its place and the draft grows clearer with every "
    "pass careful notes gather into sections that read well together and point to what comes next"
).split()


def _seed(messages: list[dict[str, Any]], model: str) -> int:
    return int(hashlib.sha256(json.dumps([model, messages], sort_keys=True, default=str).encode()).hexdigest()[:12], 16)


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


def _instance(schema: dict[str, Any] | None, rng: random.Random, name: str, defs: dict[str, Any]) -> Any:
    """A deterministic value shaped by a JSON Schema: enough to drive a workflow end to end."""
    if not schema:
        return f"simulated {name}"
    if "$ref" in schema:
        return _instance(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), rng, name, defs)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return _instance(options[0], rng, name, defs)
    if "enum" in schema:
        return schema["enum"][rng.randrange(len(schema["enum"]))]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {k: _instance(v, rng, k, defs) for k, v in props.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 3)), 3)
        return [_instance(schema.get("items"), rng, f"{name} {i + 1}", defs) for i in range(count)]
    if kind == "integer":
        low = int(schema.get("minimum", 1))
        return rng.randint(low, max(low, int(schema.get("maximum", low + 99))))
    if kind == "number":
        return round(rng.uniform(float(schema.get("minimum", 0)), float(schema.get("maximum", 100))), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    return f"simulated {name}: {_sentence(rng, 5)[:-1].lower()}"


def simulated_text(messages: list[dict[str, Any]], model: str, shape: Shape) -> str:
    rng = random.Random(_seed(messages, model))
    defs = (shape.schema or {}).get("$defs", {})
    if shape.kind == "json":
        return json.dumps(_instance(shape.schema, rng, "value", defs), indent=1)
    if shape.kind == "ndjson":
        return "".join(json.dumps(_instance(shape.schema, rng, f"item {i + 1}", defs)) + "\n" for i in range(4))
    prompt = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "") or ""
    topic = " ".join(str(prompt).split()[:8])
    paragraphs = [f"[simulated reply to: {topic}]"] + [" ".join(_sentence(rng, rng.randint(8, 14)) for _ in range(3)) for _ in range(2)]
    return "\n\n".join(paragraphs)


def simulated_stream(cfg: ModelConfig, messages: list[dict[str, Any]], params: dict[str, Any], shape: Shape) -> Iterator[str | Reply]:
    """The dry-run model: plausible, deterministic output with no network, streamed in small
    pieces (STATEPIPE_SIMULATED_DELAY seconds apart) so the live display moves."""
    text = simulated_text(messages, cfg.name, shape)
    delay = float(os.environ.get("STATEPIPE_SIMULATED_DELAY", "0.004"))
    for i in range(0, len(text), 6):
        if delay:
            time.sleep(delay)
        yield text[i : i + 6]
    prompt_chars = sum(len(str(m.get("content") or "")) for m in messages)
    yield Reply(text, SIMULATED, prompt_tokens=-(-prompt_chars // 4), completion_tokens=-(-len(text) // 4), finish_reason="stop")
