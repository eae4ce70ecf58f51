"""Step outputs as stored: JSON text, decoded back so every consumer (a live downstream step or
one resumed a day later) receives exactly the same value."""

from __future__ import annotations

import json
from typing import Any

from statepipe.errors import OutputNotSerializable


def encode(value: Any, what: str) -> str:
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise OutputNotSerializable(
            f"{what} returned {type(value).__name__}, which cannot be stored as JSON ({exc}); "
            "return dicts, lists, strings, numbers, booleans or None"
        ) from exc


def summarize(value: Any, width: int = 80) -> str:
    """One line describing an output, for the live display and step events."""
    if value is None:
        return "None"
    if isinstance(value, str):
        lines = value.strip().splitlines()
        text = lines[-1] if lines else ""
    elif isinstance(value, list):
        text = f"[{len(value)} items]"
    elif isinstance(value, dict) and len(value) > 12:
        text = "{" + ", ".join(map(str, list(value)[:12])) + ", …}"
    elif isinstance(value, dict):
        text = json.dumps({k: summarize(v, 24) if isinstance(v, (list, dict)) else v for k, v in value.items()},
                          separators=(", ", ": "), default=str, ensure_ascii=False)
    else:
        text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"
