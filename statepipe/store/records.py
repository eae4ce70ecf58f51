"""Rows read from the store and changes written to it: plain data, no SQL."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from statepipe.processes import owner_is_dead

# children of a wide fan-out read for the head of its output when not all are (see
# RunSnapshot.widths): more than a line of the widest terminal shows
FANOUT_HEAD = 200


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(ts: datetime | None) -> str | None:
    """`ts.isoformat()`, written by orjson where its text is the same: 0.4 us against 0.8, and
    `inspect --json` of a 100,000-child run formats 400,000 timestamps. orjson rounds an offset
    to whole minutes where isoformat writes its seconds (+00:19:32, a local mean time). The
    offsets of what the store reads (psycopg's timezone.utc or ZoneInfo of the session's zone)
    and of utcnow() are whole minutes in UTC, and in every zone of the tz database from 1973 on
    (Africa/Monrovia's -00:44:30 ended in 1972): isoformat writes the rest, an earlier year or
    another tzinfo, as a fixed offset may have seconds. Asking each timestamp for its offset
    instead (utcoffset()) cost half of what orjson saves."""
    if ts is None:
        return None
    zone = ts.tzinfo
    if zone is timezone.utc or zone is None or (type(zone) is ZoneInfo and ts.year > 1972):
        try:
            return orjson.dumps(ts)[1:-1].decode()  # without its quotes
        except TypeError:  # a subclass of datetime, which orjson refuses
            pass
    return ts.isoformat()


def _as_text(value: Any) -> Any:
    """What json_text writes for a value JSON has no type for: a timestamp as orjson writes one
    (ISO 8601, as datetime.isoformat), an enum as its value, anything else as its str()."""
    if isinstance(value, Enum):
        return value.value
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _like_orjson(value: Any) -> Any:
    """`value` as orjson writes it, for json to write the same (json_text's fallback): NaN and
    infinity as null, enums as their values, keys of other types than json's as text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Enum):
        return _like_orjson(value.value)
    if isinstance(value, dict):
        return {_key(k): _like_orjson(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_like_orjson(v) for v in value]
    return value


def _key(key: Any) -> Any:
    key = key.value if isinstance(key, Enum) else key
    return key if key is None or isinstance(key, (str, int, float, bool)) else _as_text(key)


# see json_text
_FALLBACK = json.JSONEncoder(default=_as_text, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS


def json_text(value: Any) -> str:
    """Compact JSON of what statepipe writes itself (commit documents, event and result lines):
    timestamps in ISO 8601, NaN and infinity as null, enums as their values, anything else JSON
    has no type for as its str(). orjson writes it, several times faster than json, timestamps
    included; json writes what orjson refuses (an integer past 64 bits), the same way."""
    try:
        return orjson.dumps(value, default=str, option=_OPTIONS).decode()
    except orjson.JSONEncodeError:
        pass
    try:  # json's encoder recurses in C: nesting deep enough for orjson to refuse is fine here
        return _FALLBACK(value)
    except (TypeError, ValueError):  # NaN, or a key json refuses
        return _FALLBACK(_like_orjson(value))


# NUL escaped in JSON text: "\u0000" that is not the tail of an escaped backslash ("\\u0000")
_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def holds_nul(text: str) -> bool:
    """Whether JSON text holds the NUL character (JSON always escapes it: \\u0000), which
    PostgreSQL's jsonb and text cannot store: an output or a run input that does is refused."""
    return "\\u0000" in text and _NUL.search(text) is not None


# -- writes -----------------------------------------------------------------------------------


@dataclass
class NewEvent:
    type: str
    step: str | None = None
    item: str | None = None
    attempt: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    ts: datetime = field(default_factory=utcnow)


@dataclass
class StepRowWrite:
    """The full mutable part of a step row, as its lifecycle left it."""

    name: str
    item: str
    state: str
    attempt: int
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    next_attempt_at: datetime | None = None
    overrides: dict[str, Any] | None = None
    feedback: str | None = None
    item_index: int | None = None  # a fan-out child's place; None once a re-expansion drops it
    waiting_for: dict[str, Any] | None = None  # {name, schema, deadline}: the input it waits for
    distribute: int | None = None  # a distributed fan-out's limit of children running at once, across workers


@dataclass
class NewStepRow:
    name: str
    item: str
    item_index: int | None
    state: str
    depends_on: list[str]
    fanout: bool = False
    compensates: str | None = None
    position: int = 0
    claimable: bool = False  # a distributed fan-out's child: any worker may claim it


@dataclass
class AttemptWrite:
    """An attempt that ended; `output` and `usage` are already JSON text."""

    step: str
    item: str
    number: int
    state: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    output: str | None = None
    usage: str | None = None  # JSON text
    cache_key: str | None = None
    cached_from: dict[str, Any] | None = None
    traceback: str | None = None  # a failed attempt's, the user's frames first (see engine.tracebacks)
    worker: str | None = None  # the owner id of the process that ran it


@dataclass
class NewRun:
    id: str
    workflow: str
    workflow_ref: str
    input_json: str
    steps: list[NewStepRow]
    event: NewEvent
    owner: str | None = None
    batch_id: str | None = None
    batch_index: int | None = None
    dry_run: bool = False
    no_cache: bool = False
    fingerprint: dict[str, str] = field(default_factory=dict)
    forked_from: str | None = None
    result_step: str | None = None
    parent_run: str | None = None  # a child workflow's: the run whose step started it
    parent_key: str | None = None  # and its key there ("step[item]/key")
    depth: int = 0


@dataclass
class RunWrite:
    state: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    clear_request: bool = False  # the control command (pause, cancel) has been carried out
    release: bool = False  # the run is at rest: its lease ends with this change
    begin: bool = False  # an owner starts executing it: its executing time counts from now
    wake_at: datetime | None = None  # going `waiting`: when it wants an executor again (a deadline)
    awaits: list[str] | None = None  # going `waiting`: the input names it waits for
    input: dict[str, Any] | None = None  # a rerun changed the run's input
    fingerprint: dict[str, str] | None = None  # the definition the run now follows


@dataclass
class Change:
    """One unit the engine commits: every transition in it lands with its events, or none does."""

    run_id: str
    fence: int | None  # the owner's fencing token; None: a claimed child's (see `claims`)
    events: list[NewEvent]
    run: RunWrite | None = None
    new_steps: list[NewStepRow] = field(default_factory=list)
    steps: list[StepRowWrite] = field(default_factory=list)
    attempts: list[AttemptWrite] = field(default_factory=list)  # attempts that ended
    claims: list[ChildHold] = field(default_factory=list)  # the children's claims it is written under


@dataclass(frozen=True)
class ChildHold:
    """A worker's claim of a distributed fan-out child, as a commit names it: the commit is
    refused if another claim has replaced it; `release` ends it (the attempt is over)."""

    name: str
    item: str
    fence: int
    release: bool = False
    start: bool = False  # an attempt begins: refused once the run is asked to stop


# -- reads ------------------------------------------------------------------------------------


@dataclass
class Event:
    run_id: str
    seq: int
    ts: datetime
    type: str
    step: str | None
    item: str | None
    attempt: int | None
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """The event's line before encoding (views.jsonl.event_line), its timestamp still a
        datetime: json_text writes it as isoformat() would, without a call back into Python."""
        return {
            "seq": self.seq,
            "run_id": self.run_id,
            "ts": self.ts,
            "type": self.type,
            "step": self.step,
            "item": self.item,
            "attempt": self.attempt,
            "data": self.data,
        }


@dataclass
class RunRow:
    id: str
    workflow: str
    workflow_ref: str
    state: str
    input: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    last_seq: int
    owner: str | None
    lease_expires_at: datetime | None
    fencing_token: int
    requested: str | None = None
    dry_run: bool = False
    no_cache: bool = False
    fingerprint: dict[str, str] = field(default_factory=dict)
    forked_from: str | None = None
    batch_id: str | None = None
    batch_index: int | None = None
    result_step: str | None = None  # the step whose output is the result (None: the sinks')
    steps_done: int = 0
    steps_total: int = 0
    cost_usd: float | None = None  # of every LLM call of every attempt
    tokens: int | None = None
    active_s: float = 0.0  # seconds owners executed it, intervals closed (see `executing_s`)
    resumed_at: datetime | None = None  # start of the interval an owner is executing it in
    wake_at: datetime | None = None  # a waiting run wants an executor again from then
    parent_run: str | None = None  # a child workflow's parent run (ctx.run_workflow)
    parent_key: str | None = None
    depth: int = 0

    @property
    def interrupted(self) -> bool:
        """Unfinished, and nobody is executing it: its owner's process is gone (dead on this host,
        or its lease ran out) or let it go (Ctrl-C, a draining worker). Derived from the lease,
        not stored: a dead owner cannot write its own end. A pending run nobody owns is queued."""
        if self.state not in ("running", "pending") or (self.state == "pending" and self.owner is None):
            return False
        if self.owner is None or self.lease_expires_at is None or self.lease_expires_at < utcnow():
            return True
        return owner_is_dead(self.owner)

    @property
    def shown_state(self) -> str:
        """The state people and API clients see: `interrupted` for a run nobody executes."""
        return "interrupted" if self.interrupted else self.state

    @property
    def stopped_at(self) -> datetime | None:
        """When an interrupted run's owner was last seen working (its last commit)."""
        return self.updated_at if self.interrupted else None

    @property
    def executing_s(self) -> float | None:
        """How long owners executed the run, idle gaps (a kill, a pause, a finished run waiting
        for a rerun) left out. Runs from before schema v6 have only their start and end."""
        if self.started_at is None:
            return None
        if not self.active_s and self.resumed_at is None:
            if self.finished_at is not None:
                return (self.finished_at - self.started_at).total_seconds()
            if self.state == "running" and not self.interrupted:
                return (utcnow() - self.started_at).total_seconds()
            return 0.0
        open_for = 0.0
        if self.resumed_at is not None:
            end = self.updated_at if self.interrupted else utcnow()
            open_for = max(0.0, (end - self.resumed_at).total_seconds())
        return self.active_s + open_for

    @property
    def age_s(self) -> float:
        return (utcnow() - self.created_at).total_seconds()

    def as_json(self, result: Any = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "workflow": self.workflow,
            "state": self.shown_state,
            "input": self.input,
            "result": result,
            "error": self.error,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "duration_s": _rounded(self.executing_s),
            "interrupted_at": iso(self.stopped_at),
            "steps_done": self.steps_done,
            "steps_total": self.steps_total,
            "cost_usd": self.cost_usd,
            "tokens": self.tokens,
            "owner": self.owner,
            "requested": self.requested,
            "dry_run": self.dry_run,
            "forked_from": self.forked_from,
            "batch_id": self.batch_id,
            "parent_run": self.parent_run,
            "parent_key": self.parent_key,
            "last_seq": self.last_seq,
        }


def _rounded(seconds: float | None) -> float | None:
    return round(seconds, 3) if seconds is not None else None


@dataclass
class AttemptRow:
    step: str
    item: str
    number: int
    state: str
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    output: Any
    usage: dict[str, Any] | None = None
    cached_from: dict[str, Any] | None = None
    traceback: str | None = None
    worker: str | None = None  # the owner id of the process that ran it (host:pid:tag)

    def as_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "state": self.state,
            "worker": self.worker,
            "usage": self.usage,
            "cached_from": self.cached_from,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "duration_s": (self.finished_at - self.started_at).total_seconds() if self.finished_at else None,
            "error": self.error,
            "traceback": self.traceback,
        }


@dataclass(frozen=True)
class ListPreview:
    """The first items of a list too big to read whole, and how many it has: what a snapshot for
    people holds in place of a big list output (Store.snapshot(preview=True))."""

    head: list[Any]
    length: int


@dataclass
class StepRow:
    name: str
    item: str
    item_index: int | None
    fanout: bool
    compensates: str | None
    state: str
    depends_on: list[str]
    attempt: int
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    next_attempt_at: datetime | None
    overrides: dict[str, Any] | None = None
    feedback: str | None = None
    waiting_for: dict[str, Any] | None = None
    attempts: list[AttemptRow] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.item)

    def with_current(self) -> list[AttemptRow]:
        """Attempts, plus the one in flight (written only when it ends) as "running"."""
        if self.state == "running" and self.attempt and all(a.number != self.attempt for a in self.attempts):
            return [*self.attempts, AttemptRow(self.name, self.item, self.attempt, "running", self.started_at or utcnow(), None, None, None)]
        return self.attempts

    @property
    def output(self) -> Any:
        """Output of the current attempt, when it succeeded."""
        for a in self.attempts:
            if a.number == self.attempt and a.state == "succeeded":
                return a.output
        return None


@dataclass
class Pruned:
    """What one transaction of Store.prune removed (or, dry, would remove): rows by table, and
    each run with the output folder its run_created event recorded (None: none recorded)."""

    runs: list[tuple[str, str | None]]
    rows: dict[str, int]


@dataclass(frozen=True)
class ClaimRequest:
    """What a worker asks of statepipe.claim_runs: up to `limit` runs for `owner`, leased for
    `ttl` seconds; only of `workflows` and of `batch_id` when given, never the runs in `skip`."""

    owner: str
    ttl: float
    limit: int
    workflows: tuple[str, ...] | None = None
    batch_id: str | None = None
    skip: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChildClaimRequest:
    """What a worker asks of statepipe.claim_children: up to `limit` children for `owner`, leased
    for `ttl` seconds; only of `workflows`, and only of the runs in `runs`, when given."""

    owner: str
    ttl: float
    limit: int
    workflows: tuple[str, ...] | None = None
    runs: tuple[str, ...] | None = None
    skip: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChildClaim:
    """A distributed fan-out child a worker just claimed, with what running it needs from its run."""

    run_id: str
    name: str
    item: str
    item_index: int
    state: str  # pending, waiting (a retry due), or running (its last worker died)
    attempt: int
    error: str | None
    fence: int
    workflow: str
    workflow_ref: str
    input: dict[str, Any]
    dry_run: bool
    overrides: dict[str, Any] | None
    feedback: str | None
    parent_attempt: int  # the fan-out's attempt: its children's inputs are those of this attempt
    started_at: datetime | None = None
    prior: str | None = None  # who held it before (a claimer that died mid-attempt)


@dataclass(frozen=True)
class Claim:
    """A run a worker just claimed, and the run's first event (run_created): a run nothing has
    happened to since is executed without reading it back, and its event file starts complete."""

    run: RunRow
    created: Event | None


@dataclass
class RunSnapshot:
    """A run with all its steps and attempts: what inspect shows and what resume starts from."""

    run: RunRow
    steps: list[StepRow]
    inputs: dict[str, Any] = field(default_factory=dict)  # values sent to the run, by name
    child_runs: list[RunRow] = field(default_factory=list)  # runs its steps started (ctx.run_workflow)
    # fan-outs not all of whose children were read (Store.snapshot's `some_children`): how many
    # children each has; its output is then a ListPreview of its first FANOUT_HEAD children's
    widths: dict[str, int] = field(default_factory=dict)
    _kids: dict[str, list[StepRow]] | None = field(default=None, init=False, repr=False, compare=False)

    def parents(self) -> list[StepRow]:
        return [s for s in self.steps if s.item == "" and s.compensates is None]

    def children(self, name: str) -> list[StepRow]:
        """The current fan-out children in item order (those a re-expansion dropped have no index).
        Indexed on the first call: a view asks once per fan-out, and a rescan of 100,000 rows
        each time made `inspect` quadratic in the number of fan-outs shown."""
        if self._kids is None:
            kids: dict[str, list[StepRow]] = {}
            for s in self.steps:
                if s.item != "" and s.item_index is not None and s.compensates is None:
                    kids.setdefault(s.name, []).append(s)
            for rows in kids.values():
                rows.sort(key=lambda s: s.item_index or 0)
            self._kids = kids
        return list(self._kids.get(name, ()))

    def width(self, name: str) -> int:
        """How many children the fan-out has, read or not."""
        return self.widths.get(name, len(self.children(name)))

    def compensations(self) -> list[StepRow]:
        """Compensation rows in the order they run (reverse completion of the steps they undo)."""
        return sorted((s for s in self.steps if s.compensates is not None), key=lambda s: s.item_index or 0)

    def output_of(self, row: StepRow) -> Any:
        """A fan-out parent's output is its children's outputs in item order."""
        if row.fanout:
            if row.name in self.widths:
                return ListPreview([c.output for c in self.children(row.name)[:FANOUT_HEAD]], self.widths[row.name])
            return [c.output for c in self.children(row.name)]
        return row.output

    def result(self) -> Any:
        return result_of(self.parents(), self.run.result_step, self.output_of)


def result_of(parents: Sequence[StepRow], chosen: str | None, output_of: Callable[[StepRow], Any]) -> Any:
    """The result step's output (Workflow(result=...)), else the sink steps' outputs: one sink,
    its output; several, a dict by name in step order. Store.results applies the same rule."""
    needed = {d for s in parents for d in s.depends_on}
    sinks = [s for s in parents if (s.name == chosen if chosen else s.name not in needed)]
    if len(sinks) == 1:
        return output_of(sinks[0])
    return {s.name: output_of(s) for s in sinks}
