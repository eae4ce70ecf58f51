"""Reading run input from the command line and from files, with errors that say where."""

from __future__ import annotations

import json
from typing import Any

from statepipe.errors import InputError


def json_object(text: str, where: str) -> dict[str, Any]:
    """A JSON object, or an InputError naming `where` and the position of the fault."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON in {where}: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    if not isinstance(value, dict):
        raise InputError(f"input in {where} must be a JSON object, got {type(value).__name__}")
    return value


def json_or_text(raw: str) -> Any:
    """`3`, `true`, `[1,2]`, `"x"` are JSON; anything else is the string as typed."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw
