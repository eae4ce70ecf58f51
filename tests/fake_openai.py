"""A local, scriptable OpenAI-compatible HTTP server for tests (stdlib only).

The real `openai` client talks to it over real HTTP on 127.0.0.1:

    with FakeOpenAI() as server:
        server.script(Text("hello world", chunk_size=2, delay=0.01), Error(429, retry_after=0.2))
        client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        ...

Only `POST /v1/chat/completions` is served (anything else: 404 with an OpenAI-style error).

Replies are taken, one per request, in this order of precedence:
  1. the per-model queue (`script_for(model, ...)`) of the request's `model`;
  2. the per-model standing reply (`always(reply, model=...)`);
  3. the global queue (`script(...)`);
  4. the global standing reply (`always(reply)`);
  5. a deterministic echo of the last user message (`Text("Echo: ...")`).

Framing: every response is HTTP/1.1 with `Connection: close`. Non-streamed bodies carry a
`Content-Length`; streamed bodies (`text/event-stream`) use chunked transfer encoding, one
HTTP chunk per SSE event, written with TCP_NODELAY, so each event leaves the server the moment
it is produced and a connection cut mid-stream is seen by the client as an incomplete body
(an error), never as a clean end of stream. A `Cut` can instead frame its stream as servers and
proxies without chunking do (`framing="close"` or `"length"`), where an early close can look,
to the client, like a clean end.

Timestamps (`request_times`, `chunk_times`, `chunks`) are `time.monotonic()` values, comparable
with `time.monotonic()` taken in the test process (same clock, any thread).
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = ["ChunkRecord", "Cut", "Error", "FakeOpenAI", "Reply", "Text", "ToolCall"]


# ---------------------------------------------------------------- reply specs


@dataclass
class Text:
    """A plain assistant message. Streamed in pieces of `chunk_size` characters, `delay`
    seconds apart. `usage` is (prompt_tokens, completion_tokens); computed if None.
    `model` overrides the model name echoed back (default: the request's model)."""

    content: str
    chunk_size: int = 4
    delay: float = 0.0
    usage: tuple[int, int] | None = None
    model: str | None = None
    finish_reason: str = "stop"


@dataclass
class ToolCall:
    """An assistant message calling one function. `arguments` is JSON-encoded (a str is sent
    verbatim, so invalid JSON can be scripted). Streamed as a first delta with id/name and
    then `function.arguments` pieces of `chunk_size` characters; finish_reason "tool_calls"."""

    name: str
    arguments: dict[str, Any] | str
    chunk_size: int = 8
    delay: float = 0.0
    usage: tuple[int, int] | None = None
    model: str | None = None
    id: str | None = None


@dataclass
class Error:
    """An HTTP error with an OpenAI-style JSON body, e.g. Error(429, retry_after=1.5).
    `retry_after` becomes a `Retry-After` header (seconds; fractional values are sent as is,
    the openai client accepts them). `headers` adds any other header (e.g. x-should-retry)."""

    status: int
    body: dict[str, Any] | None = None
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Cut:
    """Start answering with `content`, then drop the connection (no terminating chunk, no
    finish_reason, no [DONE]) once `after_chars` characters have been sent. Works for streamed
    requests and non-streamed ones (a truncated Content-Length body).

    `framing` is how a streamed body is delimited: "chunked" (the stream iterator raises at the
    cut), "close" (no length at all: the body ends when the connection closes, so the cut reads
    as a clean end) or "length" (a `Content-Length` larger than what is sent)."""

    content: str
    after_chars: int
    chunk_size: int = 4
    delay: float = 0.0
    model: str | None = None
    framing: str = "chunked"


Reply = Text | ToolCall | Error | Cut


@dataclass(frozen=True)
class ChunkRecord:
    """One content-bearing streamed chunk: which request (index into `requests`), its
    position within that response, the text (content or tool-argument piece) and when it
    was written to the socket (time.monotonic())."""

    request_index: int
    index: int
    text: str
    t: float


# ---------------------------------------------------------------- helpers


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _prompt_text(body: dict[str, Any]) -> str:
    parts: list[str] = []
    for msg in body.get("messages") or []:
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return "\n".join(parts)


def _last_user_text(body: dict[str, Any]) -> str:
    for msg in reversed(body.get("messages") or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _pieces(text: str, size: int) -> list[str]:
    size = max(1, size)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _usage(body: dict[str, Any], completion_text: str, given: tuple[int, int] | None) -> dict[str, int]:
    if given is not None:
        prompt, completion = given
    else:
        prompt, completion = _tokens(_prompt_text(body)) or 1, _tokens(completion_text)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", None),
    404: ("invalid_request_error", "not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def _error_body(status: int, message: str | None = None) -> dict[str, Any]:
    etype, code = _ERROR_TYPES.get(status, ("server_error", None))
    return {
        "error": {
            "message": message or f"Fake error {status}",
            "type": etype,
            "param": None,
            "code": code,
        }
    }


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _Cancelled(Exception):
    pass


# ---------------------------------------------------------------- server


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeOpenAI


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    _framing = "chunked"

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        pass

    # --- routing

    def do_POST(self) -> None:
        raw = self._read_body()
        path = self.path.split("?", 1)[0].rstrip("/")
        if path != "/v1/chat/completions":
            self._send_json(404, _error_body(404, f"Unknown path {self.path}"))
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            self._send_json(400, _error_body(400, f"Invalid JSON body: {exc}"))
            return
        if not isinstance(body, dict):
            self._send_json(400, _error_body(400, "Invalid JSON body: body is not an object"))
            return
        fake = self.server.fake
        index, reply = fake._take(body, dict(self.headers.items()))
        try:
            self._answer(index, body, reply)
        except (BrokenPipeError, ConnectionResetError, _Cancelled):
            self.close_connection = True

    def _not_found(self) -> None:
        self._read_body()
        self._send_json(404, _error_body(404, f"Unknown path {self.path}"))

    do_GET = do_PUT = do_DELETE = do_PATCH = _not_found

    # --- I/O

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.send_header("x-request-id", f"req_fake_{id(self):x}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        self.close_connection = True

    def _start_stream(self, framing: str = "chunked") -> None:
        self._framing = framing
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        if framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        elif framing == "length":
            self.send_header("Content-Length", "1000000")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True

    def _write_chunk(self, data: bytes) -> None:
        # One write per HTTP chunk: size line, payload and CRLF together.
        if self._framing == "chunked":
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self.wfile.write(data)
        self.wfile.flush()

    def _event(self, payload: dict[str, Any] | str) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        self._write_chunk(f"data: {text}\n\n".encode())

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _cut(self) -> None:
        """Drop the connection abruptly: no terminating chunk, no [DONE]."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _sleep(self, delay: float) -> None:
        if delay > 0 and self.server.fake._closing.wait(delay):
            raise _Cancelled

    # --- replies

    def _answer(self, index: int, body: dict[str, Any], reply: Reply) -> None:
        fake = self.server.fake
        if isinstance(reply, Error):
            headers = dict(reply.headers)
            if reply.retry_after is not None:
                headers["Retry-After"] = _fmt_seconds(reply.retry_after)
            self._send_json(reply.status, reply.body if reply.body is not None else _error_body(reply.status), headers)
            return

        stream = bool(body.get("stream"))
        model = getattr(reply, "model", None) or body.get("model") or "fake-model"
        cid = f"chatcmpl-fake-{index}"
        created = int(time.time())

        if not stream:
            if isinstance(reply, ToolCall):
                args = reply.arguments if isinstance(reply.arguments, str) else json.dumps(reply.arguments)
                message: dict[str, Any] = {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": reply.id or f"call_fake_{index}",
                            "type": "function",
                            "function": {"name": reply.name, "arguments": args},
                        }
                    ],
                }
                finish, usage = "tool_calls", _usage(body, args, reply.usage)
            else:
                message = {"role": "assistant", "content": reply.content, "refusal": None}
                finish = reply.finish_reason if isinstance(reply, Text) else "stop"
                usage = _usage(body, reply.content, reply.usage if isinstance(reply, Text) else None)
            payload = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": usage,
            }
            if isinstance(reply, Cut):
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                start = data.index(b'"content": ') + len(b'"content": "')
                self.wfile.write(data[: min(len(data) - 1, start + max(0, reply.after_chars))])
                self._cut()
                return
            self._send_json(200, payload)
            return

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }

        n = 0

        def content_event(delta: dict[str, Any], text: str) -> None:
            nonlocal n
            # Stamped just before the write: the moment the chunk leaves the server.
            fake._record_chunk(index, n, text, time.monotonic())
            self._event(chunk(delta))
            n += 1

        self._start_stream(reply.framing if isinstance(reply, Cut) else "chunked")

        if isinstance(reply, ToolCall):
            args = reply.arguments if isinstance(reply.arguments, str) else json.dumps(reply.arguments)
            call_id = reply.id or f"call_fake_{index}"
            self._event(
                chunk(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": call_id,
                                "type": "function",
                                "function": {"name": reply.name, "arguments": ""},
                            }
                        ],
                    }
                )
            )
            for i, piece in enumerate(_pieces(args, reply.chunk_size)):
                if i:
                    self._sleep(reply.delay)
                content_event({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, piece)
            self._event(chunk({}, "tool_calls"))
            completion_text, given_usage = args, reply.usage
        else:
            self._event(chunk({"role": "assistant", "content": ""}))
            if isinstance(reply, Cut):
                limit = max(0, reply.after_chars)
                for i, piece in enumerate(_pieces(reply.content[:limit], reply.chunk_size)):
                    if i:
                        self._sleep(reply.delay)
                    content_event({"content": piece}, piece)
                self._cut()
                return
            for i, piece in enumerate(_pieces(reply.content, reply.chunk_size)):
                if i:
                    self._sleep(reply.delay)
                content_event({"content": piece}, piece)
            self._event(chunk({}, reply.finish_reason))
            completion_text, given_usage = reply.content, reply.usage

        if include_usage:
            self._event(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": _usage(body, completion_text, given_usage),
                }
            )
        self._event("[DONE]")
        self._end_stream()


class FakeOpenAI:
    """A scriptable OpenAI-compatible server on 127.0.0.1:<ephemeral>, serving from a daemon
    thread. Use as a context manager or call `close()`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._queue: deque[Reply] = deque()
        self._model_queues: dict[str, deque[Reply]] = {}
        self._always: Reply | None = None
        self._model_always: dict[str, Reply] = {}
        self._requests: list[dict[str, Any]] = []
        self._headers: list[dict[str, str]] = []
        self._request_times: list[float] = []
        self._chunks: list[ChunkRecord] = []
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.fake = self
        self.host, self.port = self._httpd.server_address[:2]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="FakeOpenAI", daemon=True
        )
        self._thread.start()
        self._closed = False

    # --- lifecycle

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing.set()  # aborts streams sleeping between chunks
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- scripting

    def script(self, *replies: Reply) -> FakeOpenAI:
        """Queue replies for the next requests (any model), consumed one per request."""
        with self._lock:
            self._queue.extend(replies)
        return self

    def script_for(self, model: str, *replies: Reply) -> FakeOpenAI:
        """Queue replies for requests whose `model` is `model`; they take precedence."""
        with self._lock:
            self._model_queues.setdefault(model, deque()).extend(replies)
        return self

    def always(self, reply: Reply | None, model: str | None = None) -> FakeOpenAI:
        """A standing reply used whenever the relevant queue is empty (None removes it).
        With `model`, only for that model (e.g. `always(Error(500), model="a")`: model "a"
        is down for good)."""
        with self._lock:
            if model is None:
                self._always = reply
            elif reply is None:
                self._model_always.pop(model, None)
            else:
                self._model_always[model] = reply
        return self

    def pending(self, model: str | None = None) -> int:
        """Replies still queued (global queue, or the given model's queue)."""
        with self._lock:
            q = self._queue if model is None else self._model_queues.get(model, ())
            return len(q)

    # --- recordings (snapshots, safe to read from any thread)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of the chat-completion requests received, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def request_headers(self) -> list[dict[str, str]]:
        """The headers of those requests (same order), e.g. `x-stainless-retry-count`."""
        with self._lock:
            return list(self._headers)

    @property
    def request_times(self) -> list[float]:
        """time.monotonic() at which each request (body read) arrived."""
        with self._lock:
            return list(self._request_times)

    @property
    def chunks(self) -> list[ChunkRecord]:
        """Every content-bearing streamed chunk written, across requests, in write order."""
        with self._lock:
            return list(self._chunks)

    @property
    def chunk_times(self) -> list[float]:
        """time.monotonic() at which each content-bearing chunk was written (see `chunks`)."""
        with self._lock:
            return [c.t for c in self._chunks]

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._requests) >= n:
                    return True
            time.sleep(0.005)
        return False

    # --- internals (called from handler threads)

    def _take(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Reply]:
        now = time.monotonic()
        model = body.get("model")
        with self._lock:
            index = len(self._requests)
            self._requests.append(body)
            self._headers.append({k.lower(): v for k, v in headers.items()})
            self._request_times.append(now)
            mq = self._model_queues.get(model) if isinstance(model, str) else None
            if mq:
                return index, mq.popleft()
            if isinstance(model, str) and model in self._model_always:
                return index, self._model_always[model]
            if self._queue:
                return index, self._queue.popleft()
            if self._always is not None:
                return index, self._always
        user = _last_user_text(body)
        return index, Text(f"Echo: {user[:200]}" if user else "Hello from FakeOpenAI.")

    def _record_chunk(self, request_index: int, index: int, text: str, t: float) -> None:
        with self._lock:
            self._chunks.append(ChunkRecord(request_index, index, text, t))
