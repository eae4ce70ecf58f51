"""A workflow's DAG as an SVG picture drawn here, in Python: a layered layout (a step's column is
its dependency depth) is all a workflow of a few dozen steps needs, and it spares the dashboard
Mermaid's megabytes of JavaScript. Names are escaped; the page colours nodes by state through
their `data-step` attribute and CSS classes."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

CHAR_W = 7.2  # px per character of the 12px label font, near enough for box widths
NODE_H = 30
COL_GAP = 46
ROW_GAP = 14
PAD = 8
STACK = 4  # offset of the shadow boxes that mark a fan-out


@dataclass(frozen=True)
class Node:
    name: str
    depends_on: Sequence[str]
    fanout: bool = False
    state: str | None = None


def layers(nodes: Sequence[Node]) -> list[list[Node]]:
    """Columns by longest dependency path; within a column, ordered by where the node's
    dependencies sit (barycentre), so edges cross less than declaration order would make them."""
    by_name = {n.name: n for n in nodes}
    depth: dict[str, int] = {}

    def depth_of(name: str, seen: frozenset[str] = frozenset()) -> int:
        if name not in depth:
            deps = [d for d in by_name[name].depends_on if d in by_name and d not in seen]
            depth[name] = 1 + max((depth_of(d, seen | {name}) for d in deps), default=-1)
        return depth[name]

    cols: list[list[Node]] = [[] for _ in range(1 + max((depth_of(n.name) for n in nodes), default=0))]
    for n in nodes:
        cols[depth[n.name]].append(n)
    place: dict[str, float] = {n.name: float(i) for i, n in enumerate(cols[0])} if cols else {}
    for col in cols[1:]:
        order = {n.name: i for i, n in enumerate(col)}
        col.sort(key=functools.partial(_centre, place=place, order=order))
        place.update({n.name: float(i) for i, n in enumerate(col)})
    return cols


def _centre(n: Node, place: dict[str, float], order: dict[str, int]) -> tuple[float, int]:
    known = [place[d] for d in n.depends_on if d in place]
    return (sum(known) / len(known) if known else float(order[n.name]), order[n.name])


def _width(n: Node) -> float:
    return max(70.0, len(n.name) * CHAR_W + 26 + (10 if n.fanout else 0))


def dag_svg(nodes: Sequence[Node]) -> Markup:
    """Columns left to right. An edge that skips columns and would run behind a box between
    goes over the boxes instead, in a lane of its own, so every dependency stays visible."""
    if not nodes:
        return Markup("")
    cols = layers(nodes)
    column = {n.name: c for c, col in enumerate(cols) for n in col}
    widths = [max(_width(n) for n in col) for col in cols]
    tallest = max(len(col) for col in cols)
    height = float(tallest * (NODE_H + ROW_GAP) - ROW_GAP + 2 * PAD + STACK)
    boxes: dict[str, tuple[float, float, float]] = {}
    x = float(PAD)
    for col, w in zip(cols, widths):
        top = PAD + (tallest - len(col)) * (NODE_H + ROW_GAP) / 2
        for i, n in enumerate(col):
            boxes[n.name] = (x, top + i * (NODE_H + ROW_GAP), w)
        x += w + COL_GAP
    width = x - COL_GAP + PAD + STACK
    edges: list[str] = []
    lanes = 0
    highest = float(PAD)
    for n in nodes:
        x2, y2, _ = boxes[n.name]
        for d in n.depends_on:
            if d not in boxes:
                continue
            x1, y1, w1 = boxes[d]
            sx, sy, ex, ey = x1 + w1, y1 + NODE_H / 2, x2 - 2, y2 + NODE_H / 2
            between = [boxes[m.name][1] for c in range(column[d] + 1, column[n.name]) for m in cols[c]]
            low, high = min(sy, ey), max(sy, ey)
            if any(by - 4 <= high and low <= by + NODE_H + 4 for by in between):
                lane = min(between) - 10 - 7 * lanes
                lanes += 1
                highest = min(highest, lane)
                path = (f"M{sx:.1f},{sy:.1f} C{sx + 24:.1f},{sy:.1f} {sx + 10:.1f},{lane:.1f} {sx + 34:.1f},{lane:.1f}"
                        f" L{ex - 34:.1f},{lane:.1f} C{ex - 10:.1f},{lane:.1f} {ex - 24:.1f},{ey:.1f} {ex:.1f},{ey:.1f}")
            else:
                mid = (sx + ex) / 2
                path = f"M{sx:.1f},{sy:.1f} C{mid:.1f},{sy:.1f} {mid:.1f},{ey:.1f} {ex:.1f},{ey:.1f}"
            edges.append(f'<path class="dag-edge" data-from="{escape(d)}" data-to="{escape(n.name)}" d="{path}" marker-end="url(#dag-arrow)"/>')
    shift = PAD - highest if highest < PAD else 0.0
    height += shift
    parts = [
        (f'<svg class="dag" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}"'
         f' viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="workflow graph">'),
        ('<defs><marker id="dag-arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7"'
         ' orient="auto"><path d="M0,0 L8,4 L0,8 z" class="dag-arrowhead"/></marker></defs>'),
        f'<g transform="translate(0,{shift:.1f})">',
        *edges,
    ]
    for n in nodes:
        bx, by, w = boxes[n.name]
        state = escape(n.state or "none")
        parts.append(f'<g class="dag-node st-{state}" data-step="{escape(n.name)}" tabindex="0">')
        parts.append(f"<title>{escape(n.name)}{' (one per item)' if n.fanout else ''}</title>")
        if n.fanout:
            for k in (2, 1):
                parts.append(f'<rect class="dag-shadow" x="{bx + k * STACK / 2:.1f}" y="{by + k * STACK / 2:.1f}"'
                             f' width="{w:.1f}" height="{NODE_H}" rx="6"/>')
        parts.append(f'<rect class="dag-box" x="{bx:.1f}" y="{by:.1f}" width="{w:.1f}" height="{NODE_H}" rx="6"/>')
        label = escape(n.name) + (Markup(' <tspan class="dag-fan">×n</tspan>') if n.fanout else "")
        parts.append(f'<text x="{bx + w / 2:.1f}" y="{by + NODE_H / 2 + 4:.1f}" text-anchor="middle">{label}</text>')
        parts.append("</g>")
    parts.append("</g></svg>")
    return Markup("".join(parts))
