"""Step outputs as stored: JSON text, decoded back so every consumer (a live downstream step or
one resumed a day later) receives exactly the same value."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from enum import Enum
from itertools import islice
from typing import Any
from uuid import UUID

import orjson

from statepipe.errors import InputError, OutputNotSerializable, UnstorableValue
from statepipe.store import storable

# Subclasses of str, int, dict and list, and datetimes and dataclasses, are json's to write (or
# refuse), as before orjson wrote outputs
_FAST = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _also_stored(value: Any) -> Any:
    """What orjson writes natively beyond json's types, written the same way by json."""
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# Built once: json.dumps with any non-default option builds a new encoder on every call.
_STORED = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False, default=_also_stored).encode
_SHOWN = json.JSONEncoder(default=str, ensure_ascii=False).encode


def encode(value: Any, what: str, root: str = "output") -> str:
    """JSON text of data (an output, a run input, a partial object), checked by the store's rule
    for text PostgreSQL cannot store (store.storable); `what` names whose it is, `root` what it
    is. orjson writes it (a megabyte of records in 1.3 ms where json takes 15, and every step
    waits for it); json writes what orjson refuses (an integer past 64 bits, a key that is not a
    string, nesting past 254 levels, a surrogate) and whatever holds a null, since orjson writes
    NaN and infinity as null where they must be refused."""
    try:
        raw = orjson.dumps(value, option=_FAST)
    except TypeError:  # orjson.JSONEncodeError: json writes it, depth checked first (json's own limit is lower)
        raw = None
        _checked(storable.check_depth, value, root, what)
    if raw is not None and b"null" not in raw:
        text = raw.decode()
        if b"\\u0000" not in raw:  # orjson refuses surrogates: a NUL is all it may hold
            return text
    else:
        text = _json_text(value, what, root)
    return _checked(storable.data_text, text, value, root, what)


def input_text(value: dict[str, Any], what: str = "cannot create the run") -> str:
    """A run input's JSON text, refused as the user's error by the rule for outputs (NaN, text
    PostgreSQL cannot store, nesting past store.storable.MAX_DEPTH)."""
    try:
        return encode(value, what, "input")
    except OutputNotSerializable as exc:
        raise InputError(str(exc)) from None


def _checked(check: Callable[..., Any], *args: Any) -> Any:
    """check(*args[:-1]), its UnstorableValue prefixed with whose value it is (args[-1])."""
    try:
        return check(*args[:-1])
    except UnstorableValue as exc:
        raise UnstorableValue(f"{args[-1]}: {exc}") from None


def _json_text(value: Any, what: str, root: str) -> str:
    try:
        return _STORED(value)
    except (TypeError, ValueError, RecursionError) as exc:
        if isinstance(exc, ValueError) and "Out of range float" in str(exc):
            raise OutputNotSerializable(
                f"{what}: {root} holds NaN or infinity, which JSON has no value for; use null or a string"
            ) from None
        subject = f"{what} returned {type(value).__name__}, which" if root == "output" else f"{what}: {root}"
        raise OutputNotSerializable(
            f"{subject} cannot be stored as JSON ({exc}); "
            "use dicts, lists, strings, numbers, booleans or None"
        ) from None


def decode(text: str) -> Any:
    """JSON text back to a value. The cyclic garbage collector is held off meanwhile: decoding
    makes only fresh acyclic containers, and a megabyte of them would otherwise set off full
    collections of everything the process holds (tens of milliseconds) for nothing."""
    if not gc.isenabled():
        return json.loads(text)
    gc.disable()
    try:
        return json.loads(text)
    finally:
        gc.enable()


def summarize(value: Any, width: int = 80) -> str:
    """One line describing an output, for the live display and step events."""
    text = _brief(value, width)
    return text if len(text) <= width else text[: width - 1] + "…"


def _brief(value: Any, width: int) -> str:
    if isinstance(value, str):
        lines = value.strip().splitlines()
        return lines[-1] if lines else ""
    if isinstance(value, list):
        return f"[{len(value)} items]"
    if isinstance(value, dict):
        parts: list[str] = []
        length = 0
        for key, inner in islice(value.items(), 12):
            shown = _brief(inner, 24) if isinstance(inner, (list, dict)) else _scalar(inner)
            part = f"{key}: {shown if len(shown) <= 24 else shown[:23] + '…'}"
            parts.append(part)
            length += len(part) + 2
            if length > width:
                break
        more = ", …" if len(parts) < len(value) else ""
        return "{" + ", ".join(parts) + more + "}"
    return _scalar(value)


def _scalar(value: Any) -> str:
    """JSON text of a scalar; ints (every step's counters and ids) without the encoder's detour."""
    return int.__repr__(value) if type(value) is int else _SHOWN(value)


def summarize_usage(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """An attempt's LLM calls added up: "calls" counts them, "details" keeps each one's record."""
    total: dict[str, Any] = {"calls": len(calls)}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens", "cost_usd", "latency_s"):
        total[key] = round(sum(float(c.get(key) or 0) for c in calls), 6)
        if key.endswith("tokens"):
            total[key] = int(total[key])
    total["models"] = sorted({str(c.get("model")) for c in calls})
    total["simulated"] = any(c.get("simulated") for c in calls)
    ttfts = [c["ttft_s"] for c in calls if c.get("ttft_s") is not None]
    total["ttft_s"] = round(min(ttfts), 4) if ttfts else None
    total["details"] = calls
    return total
