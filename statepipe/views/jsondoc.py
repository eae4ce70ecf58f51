"""The indented JSON documents the CLI prints (`--json`), written as they are made: a generator
in a document is an array written as it yields, so a run's 100,000 steps pass through memory a
few hundred at a time. The bytes are json.dumps(value, indent=2, ensure_ascii=False,
default=str)'s, which the views' documents have always been (tests compare them with the HTTP
API's)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from itertools import islice
from types import GeneratorType
from typing import Any

import orjson

# orjson writes what json writes, indented alike, for JSON's own types, except floats json
# writes with an exponent below 1e-4 (1e-05: orjson 0.00001, 1.5e-07: 1.5e-7). Text that may
# hold one is written by json instead; a match in a string only costs that.
_EXPONENT = re.compile(rb"e-[0-9]")  # a literal first: searched as fast as bytes.find
# datetimes, dataclasses and subclasses go to json (orjson would write them its own way), as a
# generator does: orjson refuses them all
_ORJSON = orjson.OPT_INDENT_2 | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
BATCH = 256  # items of a generator encoded in one call: a call per small item cost more than the encoding


def write_json(value: Any, write: Callable[[bytes], Any]) -> None:
    """`value` as indented JSON in UTF-8, and a newline. orjson writes each part without a
    generator in it, when it writes what json would (json, in Python when indenting, took 4.5 s
    of the 77 MB document of a 100,000-child run)."""
    _write(value, 0, write)
    write(b"\n")


def _write(value: Any, level: int, write: Callable[[bytes], Any]) -> None:
    if type(value) is GeneratorType:
        _array(value, level, write)
        return
    fast = _fast(value)
    if fast is not None:
        write(_indented(fast, level))
    elif type(value) is dict and _lazy(value):
        pad = b"\n" + b"  " * (level + 1)
        for i, (key, item) in enumerate(value.items()):
            write((b"," if i else b"{") + pad + json.dumps(key, ensure_ascii=False).encode() + b": ")
            _write(item, level + 1, write)
        write(b"\n" + b"  " * level + b"}")  # _lazy: never empty
    else:
        text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
        write((text.replace("\n", "\n" + "  " * level) if level else text).encode())


def _array(items: Iterator[Any], level: int, write: Callable[[bytes], Any]) -> None:
    """The generator's items, BATCH at a time encoded as one list when orjson can, one by one
    otherwise (a batch holding a generator, or a float orjson writes its own way)."""
    opened = False
    while batch := list(islice(items, BATCH)):
        fast = _fast(batch)
        if fast is not None:  # "[\n  a,\n  b\n]": the items with their separators, between the brackets
            write((b",\n" if opened else b"[\n") + b"  " * level + _indented(fast[2:-2], level))
        else:
            pad = b"\n" + b"  " * (level + 1)
            for i, item in enumerate(batch):
                write(b"," + pad if opened or i else b"[" + pad)
                _write(item, level + 1, write)
        opened = True
    write(b"\n" + b"  " * level + b"]" if opened else b"[]")


def _fast(value: Any) -> bytes | None:
    """orjson's indented JSON of the value when it is json's, else None."""
    try:
        text = orjson.dumps(value, option=_ORJSON)
    except TypeError:  # a generator, a type json leaves to default=str, an integer past 64 bits, a non-str key
        return None
    return text if b"0.0000" not in text and not _EXPONENT.search(text) else None


def _indented(text: bytes, level: int) -> bytes:
    """JSON text written as at nesting `level` (its first line's indent is the caller's)."""
    return text.replace(b"\n", b"\n" + b"  " * level) if level else text


def _lazy(value: dict[Any, Any]) -> bool:
    """Whether the object holds a generator, itself or in an object in it (and its keys are
    text, as json would write them)."""
    for v in value.values():
        if type(v) is GeneratorType or (type(v) is dict and _lazy(v)):
            return all(type(k) is str for k in value)
    return False
