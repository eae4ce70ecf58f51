"""Fitting values and tables to the terminal's width. A narrow terminal gives up output text
first and never an id, a step's name, its state, time or attempts; a value too long for its
room is cut by its structure (its first items and its length, keys whole), never mid-token."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, JustifyMethod, RenderResult
from rich.table import Table
from rich.text import Text

from statepipe.store.records import ListPreview

ELLIPSIS = "…"
TEXT_MIN = 6  # characters of a text worth showing cut; shorter, the text is left out
_SCALAR = json.JSONEncoder(ensure_ascii=False, default=str).encode
# a value's whole JSON, a list preview inside it counted as the items it holds
_JSON = json.JSONEncoder(ensure_ascii=False, default=lambda v: v.head if isinstance(v, ListPreview) else str(v)).encode
_BARE_KEY = re.compile(r"[A-Za-z_][\w-]*")
_NOT_WHOLE = None  # what _pieces yields for a part it cannot show whole (a list preview's tail)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _SCALAR(key)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _pieces(value: Any) -> Iterator[str | None]:
    """The one-line form of `value` in pieces, so that a reader can stop once past its room
    (a big value is never written out whole to learn that it does not fit)."""
    if isinstance(value, dict):
        yield "{"
        for i, (k, v) in enumerate(value.items()):
            yield f", {_key(str(k))}: " if i else f"{_key(str(k))}: "
            yield from _pieces(v)
        yield "}"
    elif isinstance(value, (list, tuple)):
        yield "["
        for i, v in enumerate(value):
            if i:
                yield ", "
            yield from _pieces(v)
        yield "]"
    elif isinstance(value, ListPreview):
        yield _NOT_WHOLE
    else:
        yield int.__repr__(value) if type(value) is int else _SCALAR(value)


def whole(value: Any, width: int) -> str | None:
    """The one-line form of `value` if it fits in `width` cells, else None."""
    shown: list[str] = []
    used = 0
    for piece in _pieces(value):
        if piece is _NOT_WHOLE:
            return None
        used += cell_len(piece)
        if used > width:
            return None
        shown.append(piece)
    return "".join(shown)


def brief(value: Any, width: int) -> str:
    """`value` on one line of at most `width` cells: whole when it fits, else cut by its
    structure: `[11 items: {code: "LOB", …}, {…}, …]`, `{site: {width_m: 81.2, …}, plate: {…}}`.
    Keys stay whole and numbers are never cut; text is cut at a word's end."""
    return whole(value, width) or _cut(value, width)


def _cut(value: Any, width: int) -> str:
    if isinstance(value, dict):
        return _cut_dict(value, width)
    if isinstance(value, (list, tuple, ListPreview)):
        return _cut_list(value, width)
    if isinstance(value, str):
        return _cut_text(value, width)
    return ELLIPSIS  # a number, true, false or null: whole or not at all


def _least(value: Any) -> str:
    """The shortest form that still says what `value` is."""
    if isinstance(value, dict):
        return "{…}" if value else "{}"
    if isinstance(value, (list, tuple, ListPreview)):
        n = value.length if isinstance(value, ListPreview) else len(value)
        return f"[{_count(n, 'item')}]" if n else "[]"
    if isinstance(value, str):
        return '"…"' if value else '""'
    return whole(value, 12) or ELLIPSIS


def _better(value: Any, least: str, room: int) -> str:
    """`value` in `room` cells: whole, else cut if that says more than `least`, else `least`."""
    shown = whole(value, room)
    if shown is not None:
        return shown
    if isinstance(value, (dict, list, tuple, ListPreview)):
        cut = _cut(value, room)
        return cut if cell_len(cut) > cell_len(least) else least
    if isinstance(value, str):
        cut = _cut_text(value, room)
        return cut if cell_len(cut) >= cell_len(least) + TEXT_MIN else least
    return least


def _cut_dict(value: dict[Any, Any], width: int) -> str:
    """`{first: 1, second: {…}, …}`: keys in order, each value whole when it fits, else cut to at
    most half the room left (so the keys after it show too), until no key fits."""
    out = "{"
    shown = 0
    for k, v in islice(value.items(), max(1, width // 4)):  # a key and its value take 4 cells at least
        sep = ", " if shown else ""
        name = f"{_key(str(k))}: "
        last = shown + 1 == len(value)
        room = width - cell_len(out) - cell_len(sep) - cell_len(name) - (1 if last else 4)  # "}" or ", …}"
        least = _least(v)
        if room < cell_len(least):
            break
        one = whole(v, room)
        if one is None:
            one = _better(v, least, room if last else max(cell_len(least), room // 2))
            if one == least and not isinstance(v, (dict, list, tuple, ListPreview)):
                break  # `key: "…"` says no more than the `…` closing the object
        out += sep + name + one
        shown += 1
    if shown == len(value):
        return out + "}"
    if not shown:
        return "{…}" if width >= 3 else ELLIPSIS
    return out + ", …}"


def _cut_list(value: list[Any] | tuple[Any, ...] | ListPreview, width: int) -> str:
    """`[N items: first, second, …]`: the length, then the first item (cut if need be) and the
    ones after it that fit whole."""
    items, n = (value.head, value.length) if isinstance(value, ListPreview) else (value, len(value))
    if not n:
        return "[]"
    out = f"[{_count(n, 'item')}"
    if cell_len(out) + 1 > width:
        return "[…]" if width >= 3 else ELLIPSIS
    shown = 0
    for item in islice(items, max(1, width // 3)):
        sep = ", " if shown else ": "
        room = width - cell_len(out) - cell_len(sep) - (1 if shown + 1 == n else 4)  # "]" or ", …]"
        one = whole(item, room) if shown else _better(item, _least(item), room)
        if one is None or room < cell_len(_least(item)):
            break
        out += sep + one
        shown += 1
    if shown == n:
        return out + "]"
    return out + (", …]" if shown else "]")


def _cut_text(value: str, width: int) -> str:
    """The start of the text as JSON, ended at a word's end where one is near."""
    room = width - 3  # the quotes and the ellipsis
    if room < 1:
        return '"…"' if width >= 3 else ELLIPSIS
    head = value[:room]
    while head and cell_len(_SCALAR(head)) - 2 > room:  # escapes and wide characters take more
        head = head[: -max(1, (cell_len(_SCALAR(head)) - 2 - room) // 2)]
    space = head.rfind(" ")
    if space > room // 2:
        head = head[:space]
    return _SCALAR(head.rstrip())[:-1] + '…"'


def value_lines(value: Any, width: int, limit: int) -> tuple[list[str], str | None]:
    """`value` in at most `limit` lines of `width` cells: an object a key a line, a list an item
    a line, text as its own lines; and, when it is not all there, what the whole is."""
    one = whole(value, width)
    if one is not None and not (isinstance(value, str) and "\n" in value):
        return [one], None
    lines: list[str] = []
    if isinstance(value, dict):
        cut = len(value) > limit
        for k, v in islice(value.items(), limit - 1 if cut else limit):
            name = f"{_key(str(k))}: "
            shown = whole(v, width - cell_len(name))
            cut = cut or shown is None
            lines.append(name + (shown if shown is not None else brief(v, width - cell_len(name))))
    elif isinstance(value, (list, tuple, ListPreview)):
        items, n = (value.head, value.length) if isinstance(value, ListPreview) else (value, len(value))
        take = n if n <= limit and len(items) == n else limit - 1
        cut = False
        for item in islice(items, take):
            shown = whole(item, width - 2)
            cut = cut or shown is None
            lines.append("- " + (shown if shown is not None else brief(item, width - 2)))
        if take < n:
            return lines, f"a list of {n:,} items"
    elif isinstance(value, str):
        for line in value.splitlines():
            lines.extend(textwrap.wrap(line, width, break_on_hyphens=False) or [""])
            if len(lines) > limit:
                break
        cut = len(lines) > limit
        lines = lines[: limit - 1] if cut else lines
    else:  # a number too long for a line
        lines, cut = [brief(value, width)], True
    return lines, f"the whole value is {len(_JSON(value)):,} characters of JSON" if cut else None


Cell = str | Text | Callable[[int], Text]


@dataclass
class Column:
    header: str
    justify: JustifyMethod = "left"
    drop: int | None = None  # the order in which columns go when the table is too wide; None: kept
    flex: bool = False  # takes the room that is left; its text is cut with an ellipsis
    style: str | None = None


class Fitted:
    """A table sized to the console it is printed on. When too wide, it gives things up in this
    order: the flexible column shrinks to `easy` cells, columns go by their `drop` order (the
    flexible one shrinking to FLEX_MIN before it goes), a kept flexible column shrinks, and only
    then is the first column (names) cut. No cell wraps: a table row stays one line."""

    GAP = 2  # cells between columns
    FLEX_MIN = 12  # `[11 items]`, `{code: "ED"}`: less says nothing

    def __init__(self, *columns: Column, title: str | None = None, easy: int = 24) -> None:
        self.columns = list(columns)
        self.rows: list[list[Cell]] = []
        self.title = title
        self.easy = easy

    def add_row(self, *cells: Cell) -> None:
        self.rows.append(list(cells))

    def widths(self, room: int) -> list[int | None]:
        """Each column's width in `room` cells; None for a column given up (or droppable and empty)."""
        natural: list[int | None] = []
        for i, col in enumerate(self.columns):
            widest = max((_cell_len(row[i], room) for row in self.rows), default=0)
            natural.append(None if widest == 0 and col.drop is not None else max(cell_len(col.header), widest))
        widths = list(natural)

        def excess() -> int:
            shown = [w for w in widths if w is not None]
            return sum(shown) + self.GAP * (len(shown) - 1) - room

        def shrink(i: int, floor: int) -> None:
            w = widths[i]
            if w is not None and w > floor and excess() > 0:
                widths[i] = max(floor, w - excess())

        flex = next((i for i, c in enumerate(self.columns) if c.flex), None)
        if flex is not None:
            shrink(flex, self.easy)
        for i in sorted((i for i, c in enumerate(self.columns) if c.drop is not None), key=lambda i: self.columns[i].drop or 0):
            if i == flex:
                shrink(i, self.FLEX_MIN)
            if excess() > 0:
                widths[i] = None
        if flex is not None:
            shrink(flex, self.FLEX_MIN)
            w, most = widths[flex], natural[flex]
            if w is not None and most is not None and excess() < 0:  # a dropped column left room
                widths[flex] = min(most, w - excess())
        shrink(0, self.FLEX_MIN)
        return widths

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        widths = self.widths(options.max_width)
        table = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False, expand=False, title=self.title,
                      title_justify="left", title_style="bold")
        for col, w in zip(self.columns, widths):
            if w is not None:
                table.add_column(col.header, width=w, no_wrap=True, overflow="ellipsis", justify=col.justify, style=col.style)
        for row in self.rows:
            table.add_row(*(cell(w) if callable(cell) else cell for cell, w in zip(row, widths) if w is not None))
        yield table


def _cell_len(cell: Cell, room: int) -> int:
    if callable(cell):
        cell = cell(room)
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)
