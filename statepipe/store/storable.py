"""Text PostgreSQL cannot store, and statepipe's one rule for it (README: "Text PostgreSQL
cannot store").

PostgreSQL's text and jsonb hold UTF-8 without NUL, so two kinds of character have no place
there: NUL (U+0000) and a lone UTF-16 surrogate (U+D800-U+DFFF without its partner: what
`os.fsdecode` and `errors="surrogateescape"` make of a stray byte, or what a JSON "\\ud800"
escape decodes to). A surrogate pair split in two (an emoji as two halves) is joined into its
character, which loses nothing. For the rest, the rule is:

- Data (a run's input, a step's output, a `partial` object, `rerun --set` values) is refused,
  since its consumer must receive exactly what was produced: creating the run fails with one line
  (exit 2); an attempt fails with an error naming the step, the place in the value and the
  character's position, and is retried per the step's policy.
- Messages (errors, progress, emitted chunks, hook failures, feedback, usage records) are text
  for people: each such character becomes U+FFFD, and the rest of the message is kept.

Data is checked where it is encoded (`data_text`, through engine.outputs.encode); messages are
mended by the store as it builds each commit (`mend`), so nothing unchecked reaches PostgreSQL.
Data also nests at most MAX_DEPTH levels, a limit every reader (Python's json, PostgreSQL's
jsonb) stays well within."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

from statepipe.errors import UnstorableValue
from statepipe.store.records import Change, NewEvent, NewRun, holds_nul, json_text

MAX_DEPTH = 512
REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
# NUL escaped in JSON text: "\u0000" that is not the tail of an escaped backslash ("\\u0000")
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")
_LONE = re.compile("[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]")


def storable(text: str) -> bool:
    """Whether JSON text (as json_text or json with ensure_ascii=False writes it) can be sent as
    it is: no NUL escape, no surrogate character."""
    return not holds_nul(text) and (text.isascii() or _SURROGATE.search(text) is None)


def _joined(text: str) -> str:
    """Surrogate pairs as the characters they encode; lone surrogates as U+FFFD."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


# -- data -------------------------------------------------------------------------------------


def data_text(text: str, value: Any, root: str) -> str:
    """The JSON text of data, as it can be stored: surrogate pairs joined, or UnstorableValue
    naming where in `value` (`root` is its name: "output", "input") the first unstorable
    character is."""
    if storable(text):
        return text
    found = _first_unstorable(value, root)
    if found is not None:
        where, index, char = found
        kind = "a NUL character (\\x00)" if char == "\x00" else f"a lone surrogate ({ascii(char)[1:-1]})"
        raise UnstorableValue(
            f"{where} holds {kind} at character {index}, which PostgreSQL cannot store"
            + ("" if char == "\x00" else "; decode bytes with errors='replace', or pass them as base64")
        )
    return _joined(text)  # pairs only


def _first_unstorable(value: Any, root: str) -> tuple[str, int, str] | None:
    for path, text in _strings(value, root):
        if "\x00" in text:
            index = text.index("\x00")
            lone = _LONE.search(text, 0, index)
            return (path, lone.start(), lone.group()) if lone else (path, index, "\x00")
        lone = _LONE.search(text)
        if lone is not None:
            return path, lone.start(), lone.group()
    return None


def _strings(value: Any, root: str) -> Iterator[tuple[str, str]]:
    """Every string in a value (keys included) with where it is, depth first without recursion."""
    stack: list[tuple[str, Any]] = [(root, value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            yield path, v
        elif isinstance(v, dict):
            items = list(v.items())
            for k, inner in reversed(items):
                if isinstance(k, str):
                    stack.append((f"{path} key {k!r}", k))
                stack.append((f"{path}[{k!r}]", inner))
        elif isinstance(v, (list, tuple)):
            stack.extend((f"{path}[{i}]", inner) for i, inner in reversed(list(enumerate(v))))


def depth(value: Any) -> int:
    """How deep containers nest in a value (a scalar: 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, (list, tuple)):
            d += 1
            deepest = max(deepest, d)
            stack.extend((inner, d) for inner in v if isinstance(inner, (dict, list, tuple)))
    return deepest


def check_depth(value: Any, root: str) -> None:
    levels = depth(value)
    if levels > MAX_DEPTH:
        raise UnstorableValue(f"{root} nests {levels} levels deep; statepipe stores values up to {MAX_DEPTH} levels")


# -- messages ---------------------------------------------------------------------------------


def mended(value: Any) -> Any:
    """A message value with every unstorable character replaced by U+FFFD (keys too), surrogate
    pairs joined. A container is mended through its JSON text, which json reads and writes in C
    however deep it nests (up to MAX_DEPTH and a little beside it)."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", REPLACEMENT)
        return value if value.isascii() or _SURROGATE.search(value) is None else _joined(value)
    if isinstance(value, (dict, list, tuple)):
        text = json_text(value)
        return value if storable(text) else json.loads(_joined(_NUL_ESCAPE.sub(r"\1\\ufffd", text)))
    return value


def message_json(value: Any) -> str:
    """JSON text of a message value (a usage record), mended when it must be."""
    text = json_text(value)
    return text if storable(text) else json_text(mended(value))


def mend(changes: Sequence[Change], created: Sequence[NewRun] = ()) -> None:
    """Mend, in place, the messages of changes whose commit document holds unstorable text: the
    events the views are then handed are the ones stored."""
    events: list[NewEvent] = [r.event for r in created]
    for ch in changes:
        events += ch.events
        if ch.run is not None:  # its input is data, checked before: mended only as a last resort
            ch.run.error, ch.run.input = mended(ch.run.error), mended(ch.run.input)
        for s in ch.steps:
            s.error, s.feedback, s.overrides = mended(s.error), mended(s.feedback), mended(s.overrides)
        for a in ch.attempts:
            a.error = mended(a.error)
    for e in events:
        e.data = mended(e.data)
