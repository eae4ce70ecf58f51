"""The fake OpenAI server speaks the real protocol: the real `openai` client, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import openai
import pytest
from fake_openai import Cut, Error, FakeOpenAI, Text, ToolCall

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say something"}]


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as srv:
        yield srv


def client(server: FakeOpenAI, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=max_retries, timeout=5)


def test_streamed_text_arrives_in_order_and_complete(server: FakeOpenAI) -> None:
    text = "The quick brown fox jumps over the lazy dog. Ünïcödé ✓ too."
    server.script(Text(text, chunk_size=3))
    stream = client(server).chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    pieces, finish = [], []
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        assert chunk.model == "gpt-test"
        choice = chunk.choices[0]
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish.append(choice.finish_reason)
    assert "".join(pieces) == text
    assert pieces == [text[i : i + 3] for i in range(0, len(text), 3)]
    assert finish == ["stop"]
    assert len(server.chunk_times) == len(pieces)
    [req] = server.requests
    assert req["stream"] is True and req["model"] == "gpt-test" and req["messages"] == MESSAGES


def test_stream_is_incremental(server: FakeOpenAI) -> None:
    server.script(Text("abcdefgh", chunk_size=1, delay=0.04))  # 8 chunks, ~0.28 s
    stream = client(server).chat.completions.create(model="m", messages=MESSAGES, stream=True)
    received: list[tuple[str, float]] = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received.append((chunk.choices[0].delta.content, time.monotonic()))
    sent = server.chunk_times
    assert "".join(c for c, _ in received) == "abcdefgh"
    assert len(sent) == 8
    # The first chunk reached the client well before the server wrote the last one.
    assert received[0][1] < sent[-1] - 0.1
    # Each chunk was delivered promptly after it was written (no buffering, no Nagle stall).
    lags = [t_recv - t_sent for (_, t_recv), t_sent in zip(received, sent)]
    assert all(0 <= lag < 0.15 for lag in lags), lags
    assert server.request_times[0] <= sent[0]


def test_usage_arrives_in_final_chunk(server: FakeOpenAI) -> None:
    server.script(Text("hello there", usage=(7, 5)), Text("hello there"), Text("no usage asked"))
    c = client(server)
    chunks = list(
        c.chat.completions.create(model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    )
    last = chunks[-1]
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (7, 5, 12)
    assert all(ch.usage is None for ch in chunks[:-1])

    computed = list(
        c.chat.completions.create(model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    )[-1].usage
    assert computed.completion_tokens == 3 and computed.prompt_tokens > 0
    assert computed.total_tokens == computed.prompt_tokens + computed.completion_tokens

    plain = list(c.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert all(ch.usage is None for ch in plain) and plain[-1].choices[0].finish_reason == "stop"


def test_non_streamed_completion(server: FakeOpenAI) -> None:
    server.script(Text("a full answer", usage=(10, 3), model="served-model"))
    resp = client(server).chat.completions.create(model="asked-model", messages=MESSAGES, temperature=0.2)
    assert resp.object == "chat.completion"
    assert resp.model == "served-model"
    assert resp.choices[0].message.content == "a full answer"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason == "stop"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (10, 3, 13)
    assert server.requests[0]["temperature"] == 0.2 and "stream" not in server.requests[0]


def test_default_reply_echoes_deterministically(server: FakeOpenAI) -> None:
    c = client(server)
    a = c.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content
    b = "".join(
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    )
    assert a == b == "Echo: say something"


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def test_tool_call_streamed(server: FakeOpenAI) -> None:
    args = {"city": "Paris", "unit": "celsius", "days": [1, 2, 3]}
    server.script(ToolCall("get_weather", args, chunk_size=5))
    stream = client(server).chat.completions.create(model="m", messages=MESSAGES, tools=TOOLS, stream=True)
    name, call_id, arg_pieces, finish = None, None, [], None
    for chunk in stream:
        choice = chunk.choices[0]
        for tc in choice.delta.tool_calls or []:
            assert tc.index == 0
            call_id = tc.id or call_id
            if tc.function and tc.function.name:
                name = tc.function.name
            if tc.function and tc.function.arguments:
                arg_pieces.append(tc.function.arguments)
        finish = choice.finish_reason or finish
    assert name == "get_weather" and call_id
    assert len(arg_pieces) > 3
    assert json.loads("".join(arg_pieces)) == args
    assert finish == "tool_calls"
    assert server.requests[0]["tools"] == TOOLS


def test_tool_call_non_streamed(server: FakeOpenAI) -> None:
    server.script(ToolCall("get_weather", {"city": "Oslo"}, id="call_42"))
    resp = client(server).chat.completions.create(model="m", messages=MESSAGES, tools=TOOLS)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [tc] = choice.message.tool_calls
    assert (tc.id, tc.type, tc.function.name) == ("call_42", "function", "get_weather")
    assert json.loads(tc.function.arguments) == {"city": "Oslo"}


def test_429_surfaces_as_rate_limit_error_with_retry_after(server: FakeOpenAI) -> None:
    server.script(Error(429, retry_after=2), Error(429, retry_after=0.75))
    c = client(server)
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    err = info.value
    assert err.status_code == 429
    assert err.response.headers["retry-after"] == "2"
    assert err.code == "rate_limit_exceeded"
    assert isinstance(err.body, dict) and err.body["message"]  # body is the inner "error" object
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="m", messages=MESSAGES)
    assert float(info.value.response.headers["retry-after"]) == 0.75
    assert len(server.requests) == 2  # max_retries=0: no hidden retries


def test_500_surfaces_as_internal_server_error(server: FakeOpenAI) -> None:
    server.script(Error(500), Error(503, body={"error": {"message": "overloaded", "type": "server_error"}}))
    c = client(server)
    with pytest.raises(openai.InternalServerError) as info:
        c.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    assert info.value.status_code == 500
    with pytest.raises(openai.InternalServerError, match="overloaded") as info:
        c.chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.status_code == 503


def test_client_own_retries_honour_retry_after(server: FakeOpenAI) -> None:
    """Documents the client's behaviour with max_retries > 0: it sleeps Retry-After itself."""
    server.script(Error(429, retry_after=0.3), Text("finally"))
    start = time.monotonic()
    resp = client(server, max_retries=1).chat.completions.create(model="m", messages=MESSAGES)
    assert resp.choices[0].message.content == "finally"
    times = server.request_times
    assert len(times) == 2 and times[1] - times[0] >= 0.3
    assert time.monotonic() - start >= 0.3
    assert [h.get("x-stainless-retry-count") for h in server.request_headers] == ["0", "1"]


def test_cut_mid_stream_raises_after_partial_content(server: FakeOpenAI) -> None:
    server.script(Cut("0123456789abcdef", after_chars=10, chunk_size=4), Text("unused"))
    stream = client(server, max_retries=2).chat.completions.create(model="m", messages=MESSAGES, stream=True)
    got: list[str] = []
    with pytest.raises(openai.APIConnectionError) as info:
        for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "0123456789"
    # The transport error is chained (an httpx2 RemoteProtocolError: incomplete chunked read).
    assert info.value.__cause__ is not None
    # A mid-stream failure is never retried by the client: only one request was made.
    assert len(server.requests) == 1 and server.pending() == 1


def test_cut_non_streamed_raises_connection_error(server: FakeOpenAI) -> None:
    server.script(Cut("some long answer", after_chars=4))
    with pytest.raises(openai.APIConnectionError):
        client(server).chat.completions.create(model="m", messages=MESSAGES)


def test_per_model_scripting_for_fallbacks(server: FakeOpenAI) -> None:
    server.always(Error(500), model="primary")
    server.script_for("backup", Text("from backup"), Text("backup again"))
    server.script(Text("global"))
    c = client(server)

    def ask_with_fallback() -> tuple[str, str]:
        for model in ("primary", "backup"):
            try:
                resp = c.chat.completions.create(model=model, messages=MESSAGES)
            except openai.InternalServerError:
                continue
            return model, resp.choices[0].message.content or ""
        raise AssertionError("all models failed")

    assert ask_with_fallback() == ("backup", "from backup")
    assert ask_with_fallback() == ("backup", "backup again")
    assert ask_with_fallback() == ("backup", "global")  # per-model queue empty: global queue
    assert [r["model"] for r in server.requests] == ["primary", "backup"] * 3
    assert server.pending() == 0 and server.pending("backup") == 0


def test_concurrent_streams_are_served_in_parallel(server: FakeOpenAI) -> None:
    server.script(*[Text("abcde", chunk_size=1, delay=0.05) for _ in range(4)])  # ~0.2 s each
    c = client(server)
    results: list[str] = []

    def run() -> None:
        s = c.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        results.append("".join(ch.choices[0].delta.content or "" for ch in s))

    start = time.monotonic()
    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["abcde"] * 4
    assert time.monotonic() - start < 0.6


def test_async_client_streams(server: FakeOpenAI) -> None:
    server.script(Text("async works", chunk_size=2), Cut("partial", after_chars=3))

    async def main() -> tuple[str, str, BaseException | None]:
        ac = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0, timeout=5)
        s = await ac.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        full = "".join([ch.choices[0].delta.content or "" async for ch in s])
        partial, error = "", None
        s = await ac.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        try:
            async for ch in s:
                partial += ch.choices[0].delta.content or ""
        except Exception as exc:  # noqa: BLE001
            error = exc
        await ac.close()
        return full, partial, error

    full, partial, error = asyncio.run(main())
    assert full == "async works"
    assert partial == "par" and isinstance(error, openai.APIConnectionError)


def test_unknown_paths_are_404(server: FakeOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client(server).models.list()
    req = urllib.request.Request(server.base_url + "/embeddings", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 404
    assert json.loads(info.value.read())["error"]["code"] == "not_found"
    assert server.requests == []


def test_close_aborts_slow_stream_promptly() -> None:
    srv = FakeOpenAI()
    srv.script(Text("x" * 100, chunk_size=1, delay=1.0))
    stream = client(srv).chat.completions.create(model="m", messages=MESSAGES, stream=True)
    next(iter(stream))
    start = time.monotonic()
    srv.close()
    assert time.monotonic() - start < 1.0
    with pytest.raises(openai.APIConnectionError):
        for _ in stream:
            pass
