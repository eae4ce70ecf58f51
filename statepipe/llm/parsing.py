"""Structured output parsed while a model is still streaming it, so results reach the user item by
item instead of all at once when the reply ends.

Two shapes are handled here (the third, a plain JSON reply, needs nothing but `json.loads`):

* NDJSON, one object per line: `NDJSONParser` yields each object as soon as its line ends, and
  copes with what models actually write: blank lines, code fences, an object broken over several
  lines, a stray line of prose.
* One JSON document: `JSONStreamParser` yields each element of a top-level array, and each field
  of a top-level object (and each element of a field that is an array), as soon as it closes.

Both are pure and incremental: text can be cut anywhere between two `feed` calls (mid-token,
mid-escape, mid-line) and the results are the same as for the text fed in one piece. Strings may
hold raw control characters (`strict=False`): models write literal newlines and tabs inside
strings often enough that refusing them would fail replies whose meaning is unambiguous.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any

from statepipe.store.storable import MAX_DEPTH

__all__ = ["Completed", "JSONStreamParser", "NDJSONParser", "ParsedLine"]


# -- NDJSON ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedLine:
    """One object read from NDJSON output, or the text that could not be read as one.

    Exactly one of `value` and `error` is set: bad lines are handed back rather than raised, so a
    caller can report them and keep the good items of the same reply.
    """

    value: dict[str, Any] | None
    text: str
    line_number: int
    error: str | None = None


class NDJSONParser:
    """Reads a stream of JSON objects, one per line, as the lines complete.

    A line that is not valid JSON is kept while it could still be the beginning of an object that
    the model broke over several lines, and joined with the lines that follow until the whole
    parses. It is given up on, and reported, as soon as a following line cannot continue it (the
    model has moved on, typically to a fresh object), when it grows beyond `max_pending_lines` or
    `max_pending_chars`, or when the stream ends. A line that cannot begin any JSON value (prose
    such as "Here are the items:") is reported at once.
    """

    def __init__(self, *, max_pending_lines: int = 200, max_pending_chars: int = 65_536) -> None:
        self._max_pending_lines = max_pending_lines
        self._max_pending_chars = max_pending_chars
        # Pieces of the line not yet ended by "\n": joined once when it ends, so a long line fed a
        # character at a time still costs linear time.
        self._partial: list[str] = []
        self._line_number = 0
        # Stripped lines (with their numbers) of an object not yet complete.
        self._pending: list[tuple[int, str]] = []

    def feed(self, chunk: str) -> list[ParsedLine]:
        *ended, rest = chunk.split("\n")
        out: list[ParsedLine] = []
        if ended:
            ended[0] = "".join(self._partial) + ended[0]
            self._partial = []
            for line in ended:
                out.extend(self._take_line(line))
        if rest:
            self._partial.append(rest)
        return out

    def close(self) -> list[ParsedLine]:
        """Reads the last line (it needs no newline) and reports whatever is still incomplete."""
        out = self._take_line("".join(self._partial))
        self._partial = []
        if self._pending:
            out.append(self._give_up("unfinished JSON object: the output ended before it was complete"))
        return out

    def _take_line(self, line: str) -> list[ParsedLine]:
        self._line_number += 1
        text = line.strip()
        if not text or text.startswith("```"):
            return []
        out: list[ParsedLine] = []
        if self._pending:
            lines = [*self._pending, (self._line_number, text)]
            joined = "\n".join(part for _, part in lines)
            try:
                value = json.loads(joined, strict=False)
            except json.JSONDecodeError as exc:
                if _could_continue(joined, exc):
                    self._pending = lines
                    return self._enforce_bound()
                out.append(
                    self._give_up(f"unfinished JSON object: line {self._line_number} does not continue it")
                )
            else:
                self._pending = []
                return [_read(lines[0][0], joined, value)]
        try:
            value = json.loads(text, strict=False)
        except json.JSONDecodeError as exc:
            if _could_continue(text, exc):
                self._pending = [(self._line_number, text)]
                return out + self._enforce_bound()
            error = f"invalid JSON: {exc.msg} (column {exc.colno})"
            out.append(ParsedLine(None, text, self._line_number, error))
        else:
            out.append(_read(self._line_number, text, value))
        return out

    def _enforce_bound(self) -> list[ParsedLine]:
        """Stops a reply that never becomes valid from being buffered (and re-parsed) forever."""
        chars = sum(len(text) for _, text in self._pending)
        if len(self._pending) > self._max_pending_lines or chars > self._max_pending_chars:
            return [
                self._give_up(
                    f"unfinished JSON object: still incomplete after {len(self._pending)} lines "
                    f"({chars} characters), gave up"
                )
            ]
        return []

    def _give_up(self, error: str) -> ParsedLine:
        first_line = self._pending[0][0]
        text = "\n".join(part for _, part in self._pending)
        self._pending = []
        return ParsedLine(None, text, first_line, error)


def _read(line_number: int, text: str, value: Any) -> ParsedLine:
    if isinstance(value, dict):
        return ParsedLine(value, text, line_number)
    return ParsedLine(None, text, line_number, f"expected a JSON object, got {_json_type(value)}")


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")
# What `json` leaves unread when input stops inside a number: "1." "1e" "1e+" (it reads the "1").
_NUMBER_TAIL = re.compile(r"\.|[eE][+-]?")
# What it leaves when input stops inside a \uXXXX escape (or between a surrogate pair's halves).
_ESCAPE_TAIL = re.compile(r"u[0-9a-fA-F]{0,4}")


def _could_continue(text: str, error: json.JSONDecodeError) -> bool:
    """Whether appending text could still make `text` valid JSON.

    `json` reports where it gave up. An unterminated string can always be closed; a complete value
    followed by more text never recovers; otherwise the input is salvageable only if what follows
    that point is nothing, or a token cut short by the end of the input. Erring towards "could
    continue" only delays a report by a line, while erring the other way would split an object
    that was merely printed over several lines.
    """
    if error.msg.startswith("Unterminated string"):
        return True
    if error.msg == "Extra data":
        return False
    tail = text[error.pos :]
    return (
        not tail.strip()
        or any(literal.startswith(tail) for literal in _LITERALS)
        or _NUMBER_TAIL.fullmatch(tail) is not None
        or _ESCAPE_TAIL.fullmatch(tail) is not None
    )


# -- one streamed JSON document -------------------------------------------------------------------

ItemPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Completed:
    """A part of the document that has closed: `path` locates it from the root, as keys and
    indices (`(2,)`, `("title",)`, `("sections", 0)`)."""

    path: ItemPath
    value: Any


class _Expect(Enum):
    """What the grammar accepts next inside a container whose items are being emitted."""

    VALUE_OR_CLOSE = auto()  # just after "["
    VALUE = auto()  # after "," in an array, after ":" in an object
    KEY_OR_CLOSE = auto()  # just after "{"
    KEY = auto()  # after "," in an object
    COLON = auto()
    COMMA_OR_CLOSE = auto()  # after an item


@dataclass
class _Frame:
    """A container whose items are emitted one by one: the root, or an array-valued root field.

    Its value is assembled from the items already parsed, so nothing is parsed twice."""

    closer: str
    path: ItemPath
    value: list[Any] | dict[str, Any]
    expect: _Expect
    key: str = ""  # objects: the field whose value comes next


@dataclass
class _Capture:
    """An item (or key) being read: its text is collected until it closes, then given to
    `json.loads`, which both validates it and decodes its strings and numbers."""

    start: int  # offset in the whole input, for error messages
    is_key: bool
    scalar: bool  # numbers and literals have no closing character; a delimiter ends them
    parts: list[str] = field(default_factory=list)
    depth: int = 0
    in_string: bool = False
    escaped: bool = False


_WHITESPACE = frozenset(" \t\r\n")
_DOCUMENT_START = re.compile(r"[\[{]")
_SCALAR_END = re.compile(r"[ \t\r\n,\]}]")
_STRING_SPECIAL = re.compile(r'["\\]')
# Inside a container, only these change depth or open a string; "\uXXXX" escapes need no state of
# their own because the backslash makes the scanner skip the "u", and hex digits are never special.
_STRUCTURE = re.compile(r'["\[\]{}]')


class JSONStreamParser:
    """Reads one JSON document arriving in chunks, emitting its parts the moment they close.

    Emitted: each element of a top-level array; each field of a top-level object; and, for a field
    whose value is an array, each of its elements followed by the field itself. An item is emitted
    when its closing bracket, brace or quote arrives; a number or literal when the delimiter after
    it does (until then "12" may still become "123").

    Scanning is a state machine over the characters, jumping between the few characters that
    matter; each item's text is decoded once when it closes, so work is linear in the input.
    Text before the first "{" or "[" (prose, a code fence) and after the document closes is
    ignored. Input that cannot be valid stops the emission; `error` says why and `close` raises it.
    """

    def __init__(self) -> None:
        self._frames: list[_Frame] = []
        self._capture: _Capture | None = None
        self._mark = 0  # where the capture's text begins in the chunk being scanned
        self._offset = 0  # characters fed before the chunk being scanned
        self._done = False
        self._result: Any = None
        self._error: str | None = None

    @property
    def error(self) -> str | None:
        """Why the input cannot be a valid document, as soon as that is known: a caller can stop
        the stream early instead of paying for tokens that will be thrown away."""
        return self._error

    def feed(self, chunk: str) -> list[Completed]:
        out: list[Completed] = []
        self._mark = 0
        i = 0
        while i < len(chunk) and self._error is None and not self._done:
            if self._capture is not None:
                i = self._scan_capture(chunk, i, out)
            elif not self._frames:
                i = self._skip_preamble(chunk, i)
            else:
                self._step(chunk, i, out)
                i += 1
        if self._capture is not None:
            self._capture.parts.append(chunk[self._mark :])
        self._offset += len(chunk)
        return out

    def close(self) -> Any:
        """The whole document, once the input has ended.

        Raises ValueError if the input is not one valid JSON object or array, or was cut short.
        """
        if self._error is not None:
            raise ValueError(self._error)
        if self._done:
            return self._result
        if not self._frames:
            raise ValueError("no JSON document found: the output contains no '{' or '['")
        where = self._capture_location() if self._capture is not None else _format_path(self._frames[-1].path)
        raise ValueError(f"incomplete JSON document: the output ended after {self._offset} characters, inside {where}")

    def _skip_preamble(self, chunk: str, i: int) -> int:
        found = _DOCUMENT_START.search(chunk, i)
        if found is None:
            return len(chunk)
        self._frames.append(_open(found.group(), ()))
        return found.end()

    def _step(self, chunk: str, i: int, out: list[Completed]) -> None:
        char = chunk[i]
        if char in _WHITESPACE:
            return
        frame = self._frames[-1]
        expect = frame.expect
        position = self._offset + i
        if expect is _Expect.COMMA_OR_CLOSE:
            if char == ",":
                frame.expect = _Expect.VALUE if frame.closer == "]" else _Expect.KEY
            elif char == frame.closer:
                self._close_frame(out)
            else:
                last = _item_path(frame) if isinstance(frame.value, dict) else (*frame.path, len(frame.value) - 1)
                self._fail(position, f"expected ',' or '{frame.closer}' after {_format_path(last)}, found {char!r}")
        elif expect is _Expect.COLON:
            if char == ":":
                frame.expect = _Expect.VALUE
            else:
                self._fail(position, f"expected ':' after key {frame.key!r}, found {char!r}")
        elif expect in (_Expect.KEY, _Expect.KEY_OR_CLOSE):
            if char == '"':
                self._begin_capture(chunk, i, is_key=True)
            elif char == "}" and expect is _Expect.KEY_OR_CLOSE:
                self._close_frame(out)
            else:
                self._fail(position, f"expected a double-quoted key in {_format_path(frame.path)}, found {char!r}")
        elif char == "]" and expect is _Expect.VALUE_OR_CLOSE:
            self._close_frame(out)
        elif char in ",:]}":
            self._fail(position, f"expected a value for {_format_path(_item_path(frame))}, found {char!r}")
        elif char == "[" and frame.closer == "}" and len(self._frames) == 1:
            self._frames.append(_open(char, (frame.key,)))
        else:
            self._begin_capture(chunk, i, is_key=False)

    def _begin_capture(self, chunk: str, i: int, *, is_key: bool) -> None:
        """Starts collecting an item's text, its first character already accounted for."""
        first = chunk[i]
        self._capture = _Capture(
            start=self._offset + i,
            is_key=is_key,
            scalar=first not in '"[{',
            depth=1 if first in "[{" else 0,
            in_string=first == '"',
        )
        self._mark = i

    def _scan_capture(self, chunk: str, i: int, out: list[Completed]) -> int:
        """Scans from `i` to the end of the captured item or of the chunk; returns where it stopped."""
        capture = self._capture
        assert capture is not None
        if capture.scalar:
            end = _SCALAR_END.search(chunk, i)
            if end is None:
                return len(chunk)
            self._finish_capture(chunk, end.start(), out)
            return end.start()  # the delimiter belongs to the grammar, not to the item
        while True:
            if capture.escaped:
                if i == len(chunk):
                    return i
                capture.escaped = False
                i += 1
                continue
            found = (_STRING_SPECIAL if capture.in_string else _STRUCTURE).search(chunk, i)
            if found is None:
                return len(chunk)
            char, i = found.group(), found.end()
            if capture.in_string:
                if char == "\\":
                    capture.escaped = True
                    continue
                capture.in_string = False
            elif char == '"':
                capture.in_string = True
                continue
            else:
                capture.depth += 1 if char in "[{" else -1
            if capture.depth == 0:
                self._finish_capture(chunk, i, out)
                return i

    def _finish_capture(self, chunk: str, end: int, out: list[Completed]) -> None:
        capture = self._capture
        assert capture is not None
        text = "".join(capture.parts) + chunk[self._mark : end]
        try:
            value = json.loads(text, strict=False)
        except json.JSONDecodeError as exc:
            self._fail(capture.start + exc.pos, f"{exc.msg}, in {self._capture_location()}")
            return
        except RecursionError:
            self._fail(capture.start, f"the value nests too many levels deep; statepipe stores values up to {MAX_DEPTH} levels, in {self._capture_location()}")
            return
        self._capture = None
        frame = self._frames[-1]
        if capture.is_key:
            frame.key = value
            frame.expect = _Expect.COLON
        else:
            self._store(frame, value, out)

    def _capture_location(self) -> str:
        frame = self._frames[-1]
        assert self._capture is not None
        return f"a key of {_format_path(frame.path)}" if self._capture.is_key else _format_path(_item_path(frame))

    def _close_frame(self, out: list[Completed]) -> None:
        frame = self._frames.pop()
        if self._frames:
            self._store(self._frames[-1], frame.value, out)
        else:
            self._done = True
            self._result = frame.value

    def _store(self, frame: _Frame, value: Any, out: list[Completed]) -> None:
        out.append(Completed(_item_path(frame), value))
        if isinstance(frame.value, list):
            frame.value.append(value)
        else:
            frame.value[frame.key] = value
        frame.expect = _Expect.COMMA_OR_CLOSE

    def _fail(self, position: int, message: str) -> None:
        """Records why the input is invalid; `position` counts characters from the first fed."""
        self._error = f"invalid JSON at character {position}: {message}"
        self._capture = None  # nothing more is read, so stop collecting text


def _open(opener: str, path: ItemPath) -> _Frame:
    if opener == "[":
        return _Frame("]", path, [], _Expect.VALUE_OR_CLOSE)
    return _Frame("}", path, {}, _Expect.KEY_OR_CLOSE)


def _item_path(frame: _Frame) -> ItemPath:
    """The path of the item `frame` reads next; in an object, that of the key read last."""
    if isinstance(frame.value, list):
        return (*frame.path, len(frame.value))
    return (*frame.path, frame.key)


def _format_path(path: ItemPath) -> str:
    """A JSONPath-like rendering for messages: `$`, `$[2]`, `$.sections[0]`."""
    rendered = "$"
    for part in path:
        if isinstance(part, int):
            rendered += f"[{part}]"
        elif part.isidentifier():
            rendered += f".{part}"
        else:
            rendered += f"[{json.dumps(part, ensure_ascii=False)}]"
    return rendered
