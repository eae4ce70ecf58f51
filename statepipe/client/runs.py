"""Listing and starting runs as `statepipe list`, `run` and the HTTP API's /api/runs all do, so
a filter means the same everywhere, a run is refused for the same reasons, and a run's document
is made once (RunRow.as_json with its result)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from statepipe.errors import ConfigError, InputError
from statepipe.lifecycles import RUN_STATES  # the names alone: python-statemachine is not imported

if TYPE_CHECKING:
    from statepipe.definition.workflow import Workflow
    from statepipe.store.records import RunRow
    from statepipe.store.store import Store


def parse_since(text: str | None, option: str = "--since") -> datetime | None:
    """'90s', '30m', '12h', '7d', or an ISO date/time."""
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)\s*([smhdw])", text.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: int(m.group(1))})
    try:
        ts = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InputError(f"invalid {option} {text!r}: use 30m, 12h, 7d or an ISO date") from exc
    return ts if ts.tzinfo else ts.astimezone()


def check_states(states: Sequence[str]) -> None:
    """Refuse a state no run can be in (a typo would otherwise match nothing, silently)."""
    for s in states:
        if s not in (*RUN_STATES, "interrupted"):
            raise InputError(f"unknown state {s!r}; one of {', '.join(RUN_STATES)}, interrupted")


def run_documents(store: Store, runs: Sequence[RunRow]) -> list[dict[str, Any]]:
    """The runs as `list --json` prints them: each run's row and its result."""
    results = store.results([r.id for r in runs])
    return [r.as_json(results.get(r.id)) for r in runs]


def check_startable(wf: Workflow, run_input: dict[str, Any], dry_run: bool) -> None:
    """Refuse a run before it exists: an input its steps cannot take, or a model whose API key
    is missing (one line now rather than a traceback in step 3)."""
    if not dry_run:
        from statepipe.llm.models import missing_keys

        missing = missing_keys(wf.models)
        if missing:
            model, env = missing[0]
            raise ConfigError(f"workflow {wf.name} calls {model}, which needs {env}; set it, or try it with --dry-run")
    wf.check_input(run_input)
