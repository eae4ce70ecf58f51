"""Reading run input from the command line and from files, with errors that say where."""

from __future__ import annotations

import codecs
import json
import sys
from pathlib import Path
from typing import Any

from statepipe.errors import InputError
from statepipe.store.storable import MAX_DEPTH


def read_text(path: str | Path, source: str) -> str:
    """A file's text (`-`: standard input), UTF-8 with or without a byte-order mark: anything
    else is refused naming the first byte that is not, rather than guessed at."""
    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {source}: {exc.strerror or exc}") from exc
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = skip + exc.start  # counted in the file, byte-order mark included
        raise InputError(f"{source} is not UTF-8: byte 0x{raw[at]:02x} at offset {at} ({exc.reason}); save it as UTF-8") from None


def _loads(text: str, where: str) -> Any:
    """json.loads, its failures as InputErrors: JSONDecodeError is the caller's to word."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise InputError(f"{where} nests too many levels deep; statepipe stores values up to {MAX_DEPTH} levels") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise InputError(f"invalid JSON in {where}: {exc}") from None


def json_object(text: str, where: str) -> dict[str, Any]:
    """A JSON object, or an InputError naming `where` and the position of the fault."""
    try:
        value = _loads(text, where)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON in {where}: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(value, dict):
        raise InputError(f"input in {where} must be a JSON object, got {type(value).__name__}")
    return value


def json_value(text: str, where: str) -> Any:
    """Any JSON value, or an InputError naming `where` and the position of the fault."""
    try:
        return _loads(text, where)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON in {where}: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def json_or_text(raw: str, where: str = "a value") -> Any:
    """`3`, `true`, `[1,2]`, `"x"` are JSON; anything else is the string as typed."""
    try:
        return _loads(raw, where)
    except json.JSONDecodeError:
        return raw
