"""A building generator, modelled on an AI design tool that turns "a 120-bed hospital" into
departments, rooms, floors and a structural grid.

The real thing calls an LLM at each step; here each step is deterministic Python that takes
about `step_seconds` and streams what it decides as it goes, so the live display, `resume`
after Ctrl-C and `rerun --from` can be watched without an API key. Every random choice comes
from `random.Random` seeded with the `seed` input and the step's own name, so a step executed
again (after a crash, or on rerun) makes exactly the choices it made before.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from statepipe import NonRetryable, StepContext, Workflow

wf = Workflow(
    "building",
    description="Generate a building: site, departments, rooms per department, floors, structural grid",
)

T = TypeVar("T")

USABLE_FRACTION = 0.85  # of a floor plate; the rest is cores, shafts and risers
PLANNING_MARGIN = 1.15  # varied room sizes and uneven corridor sides make plans outgrow the schedule
MAX_FLOORS = 30
MAX_BEDS = 2000
MAX_STAIR_TRAVEL_M = 45.0  # an escape stair within this distance of any point along the plate
GRID_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # I and O are skipped: they read as 1 and 0 on drawings
PLACEMENT_ORDER = {"ground": 0, "low": 1, "upper": 2, "any": 3}


@dataclass(frozen=True)
class RoomSpec:
    """A room type: `count = max(minimum, round(beds * per_bed))`, so the brief scales with beds."""

    name: str
    area_m2: float
    per_bed: float = 0.0
    minimum: int = 1

    def count(self, beds: int) -> int:
        return max(self.minimum, round(beds * self.per_bed))


@dataclass(frozen=True)
class DepartmentSpec:
    """`placement` says which floors suit it; a divisible department may spread over floors."""

    code: str
    name: str
    placement: str
    rooms: tuple[RoomSpec, ...]
    divisible: bool = False


@dataclass(frozen=True)
class Program:
    room_depth_m: float
    corridor_m: float
    bay_m: float
    floor_height_m: float
    ground_height_m: float
    floor_load_kpa: float  # factored dead + live load, for column sizing
    lifts_per_bed: float
    departments: tuple[DepartmentSpec, ...]


R = RoomSpec
D = DepartmentSpec
PROGRAMS: dict[str, Program] = {
    "hospital": Program(
        room_depth_m=5.4, corridor_m=2.4, bay_m=8.4, floor_height_m=4.2, ground_height_m=5.0,
        floor_load_kpa=12.0, lifts_per_bed=1 / 40,
        departments=(
            D("LOB", "Entrance and lobby", "ground", (
                R("Reception", 30), R("Waiting area", 60, 0.01), R("Cafe", 80), R("Shop", 25),
                R("WC", 8, 0.02, 2))),
            D("ED", "Emergency", "ground", (
                R("Triage room", 12, 0.02, 2), R("Treatment bay", 14, 0.12, 6), R("Resuscitation bay", 30, 0.02, 2),
                R("Observation room", 16, 0.05, 2), R("Nurse station", 20), R("Ambulance lobby", 40))),
            D("IMG", "Imaging", "ground", (
                R("X-ray room", 36, 0.01), R("CT suite", 45, 0.008), R("MRI suite", 55, 0.005),
                R("Ultrasound room", 15, 0.015, 2), R("Reporting room", 14, 0.01), R("Changing cubicle", 4, 0.03, 3))),
            D("PHA", "Pharmacy", "ground", (
                R("Dispensary", 40), R("Pharmacy store", 30, 0.01), R("Aseptic suite", 25))),
            D("SUP", "Support services", "ground", (
                R("Loading dock", 60), R("Kitchen", 120, 0.004), R("Linen store", 20, 0.02), R("Waste hold", 20),
                R("Plant room", 40, 0.02, 2), R("Mortuary", 30))),
            D("OPD", "Outpatient clinics", "low", (
                R("Consult room", 14, 0.15, 6), R("Examination room", 12, 0.1, 4), R("Clinic waiting", 40, 0.01))),
            D("SUR", "Surgery", "low", (
                R("Operating theatre", 45, 0.04, 2), R("Anaesthetic room", 16, 0.04, 2), R("Recovery bay", 12, 0.08, 4),
                R("Scrub room", 10, 0.04, 2), R("Sterile store", 20))),
            D("ICU", "Intensive care", "low", (
                R("ICU bed room", 22, 0.08, 4), R("Nurse station", 20), R("Relatives room", 15),
                R("Clean utility", 12))),
            D("WRD", "Inpatient wards", "upper", (
                R("Single patient room", 20, 0.82, 8), R("Nurse station", 18, 0.03), R("Clean utility", 10, 0.03),
                R("Dirty utility", 10, 0.03), R("Day room", 20, 0.02), R("Staff base", 14, 0.02)), divisible=True),
            D("LAB", "Laboratory", "any", (
                R("Laboratory", 40, 0.02), R("Specimen reception", 15), R("Pathology office", 12, 0.02))),
            D("ADM", "Administration", "any", (
                R("Office", 12, 0.1, 4), R("Meeting room", 20, 0.02), R("Records", 20))),
        ),
    ),
    "nursing_home": Program(
        room_depth_m=5.0, corridor_m=2.0, bay_m=7.2, floor_height_m=3.4, ground_height_m=4.0,
        floor_load_kpa=9.0, lifts_per_bed=1 / 60,
        departments=(
            D("LOB", "Entrance and lobby", "ground", (
                R("Reception", 20), R("Visitor lounge", 40), R("WC", 6, 0.02, 2))),
            D("SUP", "Kitchen and support", "ground", (
                R("Kitchen", 60, 0.006), R("Laundry", 30, 0.006), R("Loading dock", 30), R("Plant room", 30, 0.01))),
            D("THR", "Therapy", "low", (
                R("Physio gym", 60, 0.006), R("Treatment room", 14, 0.03, 2), R("Hair salon", 15))),
            D("RES", "Resident households", "any", (
                R("Resident room", 18, 1.0, 8), R("Assisted bathroom", 12, 0.06), R("Household lounge", 30, 0.05),
                R("Household dining", 40, 0.04), R("Nurse station", 14, 0.03)), divisible=True),
            D("ADM", "Administration", "any", (
                R("Office", 12, 0.05, 2), R("Meeting room", 20), R("Staff room", 25, 0.02))),
        ),
    ),
    "hotel": Program(
        room_depth_m=7.5, corridor_m=1.8, bay_m=8.1, floor_height_m=3.2, ground_height_m=4.5,
        floor_load_kpa=8.0, lifts_per_bed=1 / 80,
        departments=(
            D("LOB", "Lobby and reception", "ground", (
                R("Lobby lounge", 80, 0.004), R("Reception desk", 25), R("Luggage room", 12), R("WC", 8, 0.01, 2))),
            D("FNB", "Restaurant and bar", "ground", (
                R("Restaurant", 120, 0.004), R("Bar", 60), R("Kitchen", 80, 0.004))),
            D("BOH", "Back of house", "ground", (
                R("Loading dock", 50), R("Laundry", 60, 0.004), R("Staff room", 30, 0.004),
                R("Plant room", 40, 0.02, 2))),
            D("CNF", "Conference", "low", (
                R("Meeting room", 40, 0.02, 2), R("Ballroom", 200), R("Pre-function", 60))),
            D("GST", "Guest rooms", "upper", (
                R("Double room", 28, 0.45, 10), R("Suite", 50, 0.03), R("Housekeeping", 8, 0.03)), divisible=True),
            D("FIT", "Fitness and spa", "any", (
                R("Gym", 80), R("Treatment room", 14, 0.02, 2), R("Changing room", 25, 0, 2))),
            D("ADM", "Administration", "any", (
                R("Office", 12, 0.03, 2), R("Security room", 15))),
        ),
    ),
}
del R, D


# -- input checks: bad input never gets better on retry, hence NonRetryable ---------------------


def _int_input(name: str, value: Any, low: int, high: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise NonRetryable(f"{name} must be an integer, got {value!r}") from None
    if not low <= n <= high:
        raise NonRetryable(f"{name} must be between {low} and {high}, got {n}")
    return n


def _seconds(step_seconds: Any) -> float:
    try:
        seconds = float(step_seconds)
    except (TypeError, ValueError):
        raise NonRetryable(f"step_seconds must be a number, got {step_seconds!r}") from None
    if not 0 <= seconds <= 3600:
        raise NonRetryable(f"step_seconds must be between 0 and 3600, got {seconds:g}")
    return seconds


def _program(name: str) -> Program:
    if name not in PROGRAMS:
        raise NonRetryable(f"unknown program {name!r}; choose one of {', '.join(PROGRAMS)}")
    return PROGRAMS[name]


# -- pacing -------------------------------------------------------------------------------------


def _paced(ctx: StepContext, items: Sequence[T], seconds: float) -> Iterator[T]:
    """Yield items spread evenly over `seconds`, so a step takes as long as asked whatever its
    amount of work; the wait is sliced so a pause or cancel stops the step within 0.1 s."""
    start = time.monotonic()
    for i, item in enumerate(items, 1):
        yield item
        _sleep_until(ctx, start + seconds * i / len(items))
    _sleep_until(ctx, start + seconds)


def _sleep_until(ctx: StepContext, deadline: float) -> None:
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))
        ctx.checkpoint()


def _rng(seed: Any, *scope: str) -> random.Random:
    """One generator per step (and per department): what one step draws never shifts another's."""
    return random.Random(":".join([str(seed), *scope]))


# -- steps --------------------------------------------------------------------------------------


@wf.step
def site_analysis(
    ctx: StepContext,
    program: str = "hospital",
    beds: int = 120,
    floors: int = 4,
    seed: int = 7,
    step_seconds: float = 2.0,
) -> dict[str, Any]:
    """Size the site from the brief's area schedule, then fit the floor plate inside its setbacks.

    The plot ratio is drawn at random, so some sites are tight: when the plate the floors call
    for does not fit, the plate is capped and floor_assignment reports the overflow."""
    spec = _program(program)
    beds = _int_input("beds", beds, 1, MAX_BEDS)
    levels = _int_input("floors", floors, 1, MAX_FLOORS)
    seconds = _seconds(step_seconds)
    rng = _rng(seed, "site")

    net = sum(r.area_m2 * r.count(beds) for d in spec.departments for r in d.rooms)
    grossing = (2 * spec.room_depth_m + spec.corridor_m) / (2 * spec.room_depth_m)
    target_gross = net * grossing * PLANNING_MARGIN / USABLE_FRACTION
    plot_ratio = rng.uniform(1.2, 1.8)
    aspect = rng.uniform(1.0, 1.8)
    site_area = target_gross / plot_ratio
    width = round(math.sqrt(site_area * aspect), 1)
    depth = round(site_area / width, 1)
    setback = min(rng.choice([6.0, 8.0, 10.0]), round(0.15 * min(width, depth), 1))  # small sites too
    buildable_w, buildable_d = width - 2 * setback, depth - 2 * setback
    max_plate = 0.8 * buildable_w * buildable_d  # leave room for drop-off, service yard, planting
    plate = min(max_plate, target_gross / levels)
    plate_length = math.sqrt(plate * buildable_w / buildable_d)
    plate_depth = plate / plate_length
    access = rng.choice(["north", "east", "south", "west"])
    bearing = rng.randint(0, 359)
    soil, bearing_kpa = rng.choice([("stiff clay", 150), ("dense sand", 250), ("gravel", 300), ("weathered rock", 500)])

    findings = [
        f"site {width:.1f} × {depth:.1f} m ({width * depth:,.0f} m²), plot ratio {plot_ratio:.2f}",
        f"setback {setback:.0f} m on all sides: buildable {buildable_w:.1f} × {buildable_d:.1f} m",
        f"main access from the {access}; service access opposite",
        f"true north at {bearing}°: long facades face {_facing(bearing)}",
        f"ground: {soil}, allowable bearing {bearing_kpa} kPa",
        f"brief: {beds} beds, about {target_gross:,.0f} m² gross over {levels} floors",
        f"floor plate {plate_length:.1f} × {plate_depth:.1f} m ({plate:,.0f} m²)"
        + (" — capped by the site" if plate < target_gross / levels else ""),
    ]
    ctx.progress(f"analysing the site for a {beds}-bed {program.replace('_', ' ')}")
    for line in _paced(ctx, findings, seconds):
        ctx.emit(line + "\n")
    return {
        "brief": {"program": program, "beds": beds, "floors": levels},
        "site": {
            "width_m": width,
            "depth_m": depth,
            "setback_m": setback,
            "access": access,
            "north_bearing_deg": bearing,
        },
        "soil": {"type": soil, "bearing_kpa": bearing_kpa},
        "target_gross_m2": round(target_gross),
        "plate": {
            "length_m": round(plate_length, 1),
            "depth_m": round(plate_depth, 1),
            "area_m2": round(plate),
            "usable_m2": round(plate * USABLE_FRACTION),
        },
    }


def _facing(bearing: int) -> str:
    """Which pair of compass directions a plate's long sides face, when laid out on the site axes."""
    sector = round(bearing / 45) % 4
    return ["north and south", "north-east and south-west", "east and west", "south-east and north-west"][sector]


@wf.step
def departments(
    ctx: StepContext, site_analysis: dict[str, Any], seed: int = 7, step_seconds: float = 2.0
) -> list[dict[str, Any]]:
    """Turn the program into departments with a room schedule; each department's room sizes vary
    a little, as a designer's would."""
    brief = site_analysis["brief"]
    spec = _program(brief["program"])
    beds = brief["beds"]
    rng = _rng(seed, "departments")
    out: list[dict[str, Any]] = []
    for d in spec.departments:
        factor = rng.uniform(0.92, 1.08)
        rooms: list[dict[str, Any]] = [
            {"name": r.name, "area_m2": round(r.area_m2 * factor, 1), "count": r.count(beds)} for r in d.rooms
        ]
        out.append({
            "code": d.code,
            "name": d.name,
            "placement": d.placement,
            "divisible": d.divisible,
            "rooms": rooms,
            "planned_m2": round(sum(r["area_m2"] * r["count"] for r in rooms)),
        })
    ctx.progress(f"{len(out)} departments for the {brief['program'].replace('_', ' ')}")
    for dept in _paced(ctx, out, _seconds(step_seconds)):
        count = sum(r["count"] for r in dept["rooms"])
        where = dept["placement"]
        ctx.emit(f"{dept['code']:<4}{dept['name']}: {count} rooms, {dept['planned_m2']:,} m² net ({where})\n")
    return out


@wf.step(map_over=departments, item_key=lambda d: d["code"])
def spaces(
    ctx: StepContext, item: dict[str, Any], site_analysis: dict[str, Any], seed: int = 7, step_seconds: float = 2.0
) -> dict[str, Any]:
    """Lay one department's rooms out along a double-loaded corridor, each room on whichever side
    is shorter so far, streaming each room as it is placed."""
    spec = _program(site_analysis["brief"]["program"])
    rng = _rng(seed, "spaces", item["code"])
    depth = spec.room_depth_m
    planned = [(r["name"], r["area_m2"]) for r in item["rooms"] for _ in range(r["count"])]
    digits = max(2, len(str(len(planned))))
    sides = {"N": 0.0, "S": 0.0}
    rooms: list[dict[str, Any]] = []
    ctx.progress(f"laying out {len(planned)} rooms for {item['name']}")
    for n, (name, nominal) in enumerate(_paced(ctx, planned, _seconds(step_seconds)), 1):
        area = round(nominal * rng.uniform(0.95, 1.05), 1)
        width = round(area / depth, 2)
        side = min(sides, key=lambda s: (sides[s], s))
        room = {
            "id": f"{item['code']}-{n:0{digits}d}",
            "name": name,
            "area_m2": area,
            "side": side,
            "x_m": round(sides[side], 2),
            "width_m": width,
        }
        sides[side] += width
        rooms.append(room)
        ctx.emit(f"{room['id']} {name}: {area} m², {side} side at x = {room['x_m']:.1f} m\n")
    length = max(sides.values())
    return {
        "code": item["code"],
        "name": item["name"],
        "placement": item["placement"],
        "divisible": item["divisible"],
        "rooms": rooms,
        "net_m2": round(sum(r["area_m2"] for r in rooms), 1),
        "gross_m2": round(length * (2 * depth + spec.corridor_m), 1),
        "length_m": round(length, 1),
    }


def _candidate_levels(placement: str, n: int) -> list[int]:
    """Levels to try, best first: 'low' means the first floor, then ground, then up; 'upper'
    fills from the top down; 'ground' and 'any' take the lowest level with room."""
    if placement == "low":
        return [1, 0, *range(2, n)] if n > 1 else [0]
    if placement == "upper":
        return list(range(n - 1, -1, -1))
    return list(range(n))


def _levels_text(levels: list[int]) -> str:
    return ", ".join(f"L{i}" for i in levels)


def _preferred_levels(placement: str, n: int) -> set[int]:
    return {"ground": {0}, "low": {0, 1}, "upper": set(range(1, n)) or {0}}.get(placement, set(range(n)))


def _fill(areas: list[float], candidates: list[int], free: list[float]) -> dict[int, tuple[int, float]]:
    """Rooms onto the first candidate level with space, never back to an earlier one, so a ward
    occupies a run of floors instead of scraps of many; rooms that fit nowhere go where most
    space is left. Returns {level: (rooms, area)}."""
    free = list(free)
    queue = list(candidates)
    parts: dict[int, tuple[int, float]] = {}
    for area in areas:
        while queue and area > free[queue[0]]:
            queue.pop(0)
        target = queue[0] if queue else max(range(len(free)), key=lambda i: (free[i], -i))
        count, total = parts.get(target, (0, 0.0))
        parts[target] = (count + 1, total + area)
        free[target] -= area
    return parts


@wf.step
def floor_assignment(
    ctx: StepContext, site_analysis: dict[str, Any], spaces: list[dict[str, Any]], step_seconds: float = 2.0
) -> dict[str, Any]:
    """Stack departments on the floors. Whole departments go first (ground, low, upper, any), each
    onto its first candidate level with room; divisible ones (wards, guest rooms) then fill what is
    left room by room, a level at a time. What does not fit is placed anyway and reported, so
    the user sees which floors are over and can ask for more, rather than getting nothing."""
    usable = site_analysis["plate"]["usable_m2"]
    n = site_analysis["brief"]["floors"]
    levels: list[dict[str, Any]] = [
        {"level": i, "capacity_m2": usable, "used_m2": 0.0, "departments": []} for i in range(n)
    ]
    warnings: list[str] = []

    def free(i: int) -> float:
        return float(levels[i]["capacity_m2"] - levels[i]["used_m2"])

    def put(i: int, dept: dict[str, Any], rooms: int, area: float) -> None:
        part = {"code": dept["code"], "name": dept["name"], "rooms": rooms, "gross_m2": round(area, 1)}
        levels[i]["departments"].append(part)
        levels[i]["used_m2"] = round(levels[i]["used_m2"] + area, 1)

    order = sorted(spaces, key=lambda d: (d["divisible"], PLACEMENT_ORDER[d["placement"]]))
    ctx.progress(f"stacking {len(order)} departments on {n} floors of {usable:,} m² usable")
    for dept in _paced(ctx, order, _seconds(step_seconds)):
        candidates = _candidate_levels(dept["placement"], n)
        if dept["divisible"]:
            ratio = dept["gross_m2"] / dept["net_m2"] if dept["net_m2"] else 1.0
            parts = _fill([r["area_m2"] * ratio for r in dept["rooms"]], candidates, [free(i) for i in range(n)])
            for i in sorted(parts):
                put(i, dept, *parts[i])
            placed = sorted(parts)
        else:
            fitting = [i for i in candidates if dept["gross_m2"] <= free(i)]
            target = fitting[0] if fitting else max(candidates, key=lambda i: (free(i), -i))
            put(target, dept, len(dept["rooms"]), dept["gross_m2"])
            placed = [target]
        ctx.emit(f"{dept['code']:<4}{dept['name']} ({dept['gross_m2']:,.0f} m²) -> {_levels_text(placed)}\n")
        off = [i for i in placed if i not in _preferred_levels(dept["placement"], n)]
        if off:
            warnings.append(
                f"{dept['name']} prefers {dept['placement']} floors but is partly or wholly on {_levels_text(off)}"
            )
    for level in levels:
        over = round(level["used_m2"] - level["capacity_m2"])
        if over > 0:
            warnings.append(f"level {level['level']} is over capacity by {over:,} m²; add floors or reduce the brief")
    for w in warnings:
        ctx.progress(w)
    return {"levels": levels, "warnings": warnings}


def _grid_label(i: int) -> str:
    """A, B, ... Z, then AA, AB, ...: lettered grid lines however long the plate."""
    label = ""
    i += 1
    while i:
        i, r = divmod(i - 1, len(GRID_LETTERS))
        label = GRID_LETTERS[r] + label
    return label


@wf.step
def structural_grid(
    ctx: StepContext, site_analysis: dict[str, Any], floor_assignment: dict[str, Any], step_seconds: float = 2.0
) -> dict[str, Any]:
    """Set a column grid over the plate near the program's ideal bay, place stair and lift cores
    within escape distance, and size columns and footings from the loads. Its result sums up
    the building, so it is what the run returns."""
    brief, plate, soil = site_analysis["brief"], site_analysis["plate"], site_analysis["soil"]
    spec = _program(brief["program"])
    levels = floor_assignment["levels"]
    nx = max(1, round(plate["length_m"] / spec.bay_m))
    ny = max(1, round(plate["depth_m"] / spec.bay_m))
    bay_x, bay_y = plate["length_m"] / nx, plate["depth_m"] / ny
    x_lines = [{"label": _grid_label(i), "at_m": round(i * bay_x, 2)} for i in range(nx + 1)]
    y_lines = [{"label": str(j + 1), "at_m": round(j * bay_y, 2)} for j in range(ny + 1)]

    stairs = max(2, math.ceil(plate["length_m"] / MAX_STAIR_TRAVEL_M))
    lifts = max(1, math.ceil(brief["beds"] * spec.lifts_per_bed))
    middle = y_lines[ny // 2]["label"]
    cores: list[dict[str, Any]] = []
    for k in range(stairs):
        x = plate["length_m"] * (k + 0.5) / stairs
        nearest = min(x_lines, key=lambda g: abs(g["at_m"] - x))
        share = lifts // stairs + (k < lifts % stairs)
        cores.append({"label": f"C{k + 1}", "at": f"{nearest['label']}/{middle}", "stairs": 1, "lifts": share})

    load_kn = bay_x * bay_y * spec.floor_load_kpa * len(levels)
    # 14 MPa: about a third of C40 concrete's strength, a working stress for a first sizing
    column_mm = max(300, 50 * math.ceil(math.sqrt(load_kn * 1000 / 14.0) / 50))
    footing_m = math.sqrt(load_kn / soil["bearing_kpa"])
    foundation = (
        {"type": "pad footings", "size_m": round(math.ceil(footing_m * 10) / 10, 1)}
        if footing_m <= min(bay_x, bay_y) / 2
        else {"type": "bored piles", "piles_per_column": max(2, math.ceil(load_kn / 1500))}
    )
    heights = [spec.ground_height_m] + [spec.floor_height_m] * (len(levels) - 1)

    work = [f"grid line {g['label']} at x = {g['at_m']:.1f} m" for g in x_lines]
    work += [f"grid line {g['label']} at y = {g['at_m']:.1f} m" for g in y_lines]
    work += [f"core {c['label']} at {c['at']}: {c['stairs']} stair, {c['lifts']} lift(s)" for c in cores]
    work.append(f"columns {column_mm} mm square; {foundation['type']}")
    ctx.progress(f"{nx} × {ny} bays of {bay_x:.1f} × {bay_y:.1f} m")
    for line in _paced(ctx, work, _seconds(step_seconds)):
        ctx.emit(line + "\n")
    return {
        "program": brief["program"],
        "beds": brief["beds"],
        "levels": len(levels),
        "gross_m2": round(sum(lv["used_m2"] for lv in levels)),
        "plate_m": [plate["length_m"], plate["depth_m"]],
        "bays_m": [round(bay_x, 2), round(bay_y, 2)],
        "grid": {"x": x_lines, "y": y_lines},
        "columns_per_level": (nx + 1) * (ny + 1),
        "column_mm": column_mm,
        "foundation": foundation,
        "cores": cores,
        "floor_heights_m": heights,
        "height_m": round(sum(heights), 1),
        "warnings": floor_assignment["warnings"],
    }
