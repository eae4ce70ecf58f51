"""`statepipe logs`: a run's events as JSONL, resumable by sequence number, and live with --follow.

Every event has a per-run `seq`. A consumer that stops after seq N and comes back with
`--after N` gets exactly the events it has not seen; `--follow` tails events written by another
process and exits when the run ends, with 0 for a succeeded and 1 for a failed run.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest
from conftest import EventReader, is_event, workflow_path

from statepipe.definition.loader import load
from statepipe.engine.runtime import Runtime

EVENT_KEYS = {"seq", "run_id", "ts", "type", "step", "item", "attempt", "data"}


def _jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def _stored(store: Any, run_id: str) -> list[tuple[Any, ...]]:
    return [(e.seq, e.type, e.step, e.item, e.attempt, e.data) for e in store.events_after(run_id, 0, 100_000)]


def _comparable(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["seq"], e["type"], e["step"], e["item"], e["attempt"], e["data"]) for e in events]


def _finished_run(cli: Any, workflow: str = "crashy", *inputs: str) -> str:
    done = cli("run", workflow_path(workflow), *inputs)
    return json.loads(done.stdout.splitlines()[0])["run_id"]


def _pending_run(store: Any, workflow: str, **run_input: Any) -> str:
    """A run that exists in the store but that no process executes yet (`resume` starts it)."""
    runtime = Runtime(store)
    try:
        return runtime.create_run(load(workflow_path(workflow)), run_input, detach=True)
    finally:
        runtime.writer.close()


# -- reading a run's events ------------------------------------------------------------------


def test_logs_prints_every_event_as_jsonl_in_seq_order(cli, store):
    run_id = _finished_run(cli, "crashy", "-i", "pause=0", "-i", "items=3")
    done = cli("logs", run_id)
    assert done.returncode == 0, done.stderr
    events = _jsonl(done.stdout)
    assert all(set(e) == EVENT_KEYS for e in events)
    assert all(e["run_id"] == run_id for e in events)
    last_seq = store.get_run(run_id).last_seq
    assert [e["seq"] for e in events] == list(range(1, last_seq + 1))
    assert events[0]["type"] == "run_created" and events[-1]["type"] == "run_succeeded"
    assert _comparable(events) == _stored(store, run_id)


def test_streamed_chunks_carry_their_step_and_attempt(cli):
    run_id = _finished_run(cli, "crashy", "-i", "pause=0", "-i", "items=3")
    events = _jsonl(cli("logs", run_id).stdout)
    streamed: dict[tuple[str, str | None, int], str] = {}
    for e in events:
        if e["type"] == "output":
            key = (e["step"], e["item"], e["attempt"])
            streamed[key] = streamed.get(key, "") + e["data"]["text"]
    # each step's chunks (however the engine batches them) spell out exactly what it emitted
    labels = {("seed", None): "seed", ("left", None): "left", ("right", None): "right",
              ("join", None): "join", ("final", None): "final",
              ("fan", "0"): "fan 0", ("fan", "1"): "fan 1", ("fan", "2"): "fan 2"}
    assert streamed == {
        (step, item, 1): "".join(f"{label} part {i}\n" for i in range(4)) for (step, item), label in labels.items()
    }


def test_reader_restarting_after_seq_n_gets_exactly_the_rest(cli, store):
    run_id = _finished_run(cli, "crashy", "-i", "pause=0", "-i", "items=3")
    full = _jsonl(cli("logs", run_id).stdout)
    last = full[-1]["seq"]
    for n in (0, 1, last // 2, last - 1, last):
        seen = [e for e in full if e["seq"] <= n]  # a reader that stopped at seq n
        rest = _jsonl(cli("logs", run_id, "--after", str(n)).stdout)
        assert [e["seq"] for e in rest] == list(range(n + 1, last + 1)), n
        assert seen + rest == full, n


def test_logs_after_the_last_seq_prints_nothing(cli):
    run_id = _finished_run(cli, "crashy", "-i", "pause=0", "-i", "items=2")
    done = cli("logs", run_id, "--after", "10000")
    assert done.returncode == 0 and done.stdout == ""


# -- following a run live ----------------------------------------------------------------------


def test_follow_started_before_the_run_executes_prints_events_live(spawn, store):
    run_id = _pending_run(store, "crashy", pause=0.3, items=4)
    follower = spawn("logs", run_id, "--follow")
    follow = EventReader(follower)
    assert follow.until(lambda e: True, timeout=30)["type"] == "run_created"

    runner = spawn("resume", run_id)
    follow.until(is_event("step_started", "seed"), timeout=30)
    # the follower printed it while the run was still executing: live, not after the fact
    assert runner.poll() is None

    events = follow.rest(timeout=60)
    assert follower.wait(timeout=10) == 0
    assert runner.wait(timeout=60) == 0
    assert events[-1]["type"] == "run_succeeded"
    assert _comparable(events) == _stored(store, run_id)


def test_follow_started_while_the_run_executes_gets_backlog_then_live_tail(spawn, store):
    runner = spawn("run", workflow_path("crashy"), "-i", "pause=0.5", "-i", "items=4")
    run = EventReader(runner)
    run_id = run.run_id
    run.until(is_event("step_succeeded", "seed"), timeout=60)

    follower = spawn("logs", run_id, "--follow")
    follow = EventReader(follower)
    follow.until(is_event("step_succeeded", "seed"), timeout=30)
    assert runner.poll() is None  # the run is still going: what follows is the live tail

    events = follow.rest(timeout=60)
    assert follower.wait(timeout=10) == 0
    assert runner.wait(timeout=60) == 0
    assert [e["seq"] for e in events] == list(range(1, store.get_run(run_id).last_seq + 1))
    assert _comparable(events) == _stored(store, run_id)


def test_follow_exits_1_when_the_run_fails(spawn, store):
    run_id = _pending_run(store, "failing")
    follower = spawn("logs", run_id, "--follow")
    follow = EventReader(follower)
    follow.until(is_event("run_created"), timeout=30)

    runner = spawn("resume", run_id)
    events = follow.rest(timeout=60)
    assert follower.wait(timeout=10) == 1
    assert runner.wait(timeout=60) == 1
    assert events[-1]["type"] == "run_failed"
    assert [e for e in events if e["type"] == "step_failed"][0]["data"]["error"] == "RuntimeError: boom after 41"
    assert _comparable(events) == _stored(store, run_id)


def test_follow_of_a_finished_run_prints_it_and_exits_with_its_outcome(cli):
    ok = _finished_run(cli, "crashy", "-i", "pause=0", "-i", "items=2")
    failed = _finished_run(cli, "failing")
    done_ok = cli("logs", ok, "--follow", timeout=30)
    done_failed = cli("logs", failed, "--follow", timeout=30)
    assert done_ok.returncode == 0 and _jsonl(done_ok.stdout)[-1]["type"] == "run_succeeded"
    assert done_failed.returncode == 1 and _jsonl(done_failed.stdout)[-1]["type"] == "run_failed"
    # reconnecting after the end: nothing more to print, the outcome is still reported
    last = _jsonl(done_failed.stdout)[-1]["seq"]
    again = cli("logs", failed, "--follow", "--after", str(last), timeout=30)
    assert again.returncode == 1 and again.stdout == ""


def test_follow_reconnecting_mid_run_misses_nothing_and_repeats_nothing(spawn, store):
    runner = spawn("run", workflow_path("crashy"), "-i", "pause=0.5")
    run_id = EventReader(runner).run_id

    first = spawn("logs", run_id, "--follow")
    seen = EventReader(first)
    seen.until(is_event("step_succeeded", "fan", child=True), timeout=60)
    first.send_signal(signal.SIGKILL)  # the viewer's connection drops
    first.wait(timeout=10)
    before = list(seen.events)
    last_seen = before[-1]["seq"]
    assert runner.poll() is None  # reconnecting while the run is still executing

    second = spawn("logs", run_id, "--follow", "--after", str(last_seen))
    after = EventReader(second).rest(timeout=60)
    assert second.wait(timeout=10) == 0
    assert runner.wait(timeout=60) == 0

    assert after[0]["seq"] == last_seen + 1
    combined = before + after
    assert [e["seq"] for e in combined] == list(range(1, store.get_run(run_id).last_seq + 1))
    assert _comparable(combined) == _stored(store, run_id)
    assert combined[-1]["type"] == "run_succeeded"


# -- event files -----------------------------------------------------------------------------


def _open_files_under(folder: Any) -> list[str]:
    import os

    fds = "/proc/self/fd"
    if not os.path.isdir(fds):
        pytest.skip("needs /proc to list open files")
    out = []
    for fd in os.listdir(fds):
        try:
            target = os.readlink(f"{fds}/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            out.append(target)
    return out


def test_event_files_of_runs_that_ended_are_closed_so_a_long_lived_worker_holds_none(store, tmp_path):
    import asyncio

    from statepipe.views.jsonl import EventFiles

    runtime = Runtime(store)
    files = EventFiles(tmp_path, store)
    runtime.listen(files.write)
    loaded = load(workflow_path("echo"))
    try:
        ids = runtime.create_runs(loaded, [{"n": i} for i in range(12)], detach=True)
        finished = asyncio.run(runtime.work(4, until_idle=True))
        runtime.writer.flush()  # as the CLI does before it exits: every committed event written out
        assert finished == 12
        assert _open_files_under(tmp_path) == []
        for run_id in ids:  # and every file is complete all the same
            lines = _jsonl((tmp_path / f"{run_id}.jsonl").read_text())
            assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
            assert lines[-1]["type"] == "run_succeeded"
    finally:
        files.close()
        runtime.close()


def test_a_worker_starts_a_claimed_runs_event_file_from_the_claim_without_reading_events_back(store, tmp_path, monkeypatch):
    import asyncio

    from statepipe.views.jsonl import EventFiles

    submitter = Runtime(store)  # another process's `run --detach`: nothing written to files here
    ids = submitter.create_runs(load(workflow_path("echo")), [{"n": i} for i in range(3)], detach=True)
    submitter.writer.close()
    worker = Runtime(store)
    files = EventFiles(tmp_path, store)
    worker.listen(files.write)

    def no_backfill(*args: object, **kwargs: object) -> None:
        raise AssertionError("the event file was backfilled from the store")

    monkeypatch.setattr(store, "events_after", no_backfill)
    try:
        assert asyncio.run(worker.work(2, until_idle=True)) == 3
        worker.writer.flush()
        for run_id in ids:
            lines = _jsonl((tmp_path / f"{run_id}.jsonl").read_text())
            assert lines[0]["type"] == "run_created" and lines[0]["data"]["input"]["n"] in (0, 1, 2)
            assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
    finally:
        files.close()
        worker.close()


def test_an_event_file_keeps_the_lines_it_was_given_when_another_runs_backfill_fails(tmp_path):
    """A batch goes out run by run after it is gathered; a store error while rebuilding one
    run's missing lines must not cost another run the lines gathered before it."""
    from datetime import datetime, timezone

    from statepipe.errors import DatabaseUnavailable
    from statepipe.store.records import Event
    from statepipe.views.jsonl import EventFiles

    class StoreAway:
        def events_after(self, *args: object) -> list[Event]:
            raise DatabaseUnavailable("lost the database connection")

    now = datetime.now(timezone.utc)
    files = EventFiles(tmp_path, StoreAway())  # type: ignore[arg-type]
    try:
        with pytest.raises(DatabaseUnavailable):
            files.write([Event("a", 1, now, "run_created", None, None, None, {}), Event("a", 2, now, "run_started", None, None, None, {}),
                         Event("b", 5, now, "step_started", "s", None, 1, {})])  # b's file lacks 1-4
        files.write([Event("a", 3, now, "step_started", "s", None, 1, {})])
        assert [e["seq"] for e in _jsonl((tmp_path / "a.jsonl").read_text())] == [1, 2, 3]
    finally:
        files.close()


def test_a_finished_run_is_reported_after_the_views_have_its_events_and_never_on_the_engines_loop(store):
    import asyncio
    import threading

    runtime = Runtime(store)
    seen: list[tuple[str, str]] = []  # (what, run id) in the order the views got them
    loop_threads: set[int] = set()

    def view(events: list[Any]) -> None:
        seen.extend(("event:" + e.type, e.run_id) for e in events)

    def finished(outcome: Any) -> None:
        assert threading.get_ident() not in loop_threads
        seen.append(("finished:" + outcome.state, outcome.run_id))

    async def execute(run_id: str) -> Any:
        loop_threads.add(threading.get_ident())
        return await runtime.execute(run_id, loaded)

    runtime.listen(view)
    runtime.finished.append(finished)
    loaded = load(workflow_path("echo"))
    try:
        run_id = runtime.create_run(loaded, {"n": 1})
        assert asyncio.run(execute(run_id)).state == "succeeded"
        runtime.writer.flush()
    finally:
        runtime.close()
    assert seen[-2:] == [("event:run_succeeded", run_id), ("finished:succeeded", run_id)]


@pytest.mark.parametrize("rotation", ["removed", "renamed"])
def test_results_file_rotated_away_while_a_process_writes_it_is_made_again_for_the_next_run(store, tmp_path, rotation):
    from conftest import run_here

    from statepipe.engine.runtime import Outcome
    from statepipe.views.jsonl import ResultWriter

    first, second = (run_here(store, "echo", n=n) for n in (1, 2))
    results = ResultWriter(tmp_path)
    path = tmp_path / "results.jsonl"
    try:
        results(Outcome(first, "succeeded", {"n": 1}, store.get_run(first)))
        if rotation == "removed":
            path.unlink()
        else:
            path.rename(tmp_path / "results.jsonl.1")
        results(Outcome(second, "succeeded", {"n": 2}, store.get_run(second)))
    finally:
        results.close()
    (line,) = _jsonl(path.read_text())
    assert (line["run_id"], line["result"]) == (second, {"n": 2})
    if rotation == "renamed":
        assert [r["run_id"] for r in _jsonl((tmp_path / "results.jsonl.1").read_text())] == [first]


def test_an_event_line_is_compact_json_with_iso_timestamps_whatever_its_data_holds():
    from datetime import datetime, timezone

    from statepipe.store.records import Event
    from statepipe.views.jsonl import event_line

    ts = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=timezone.utc)
    for data in ({"n": 1, "text": "naïve ☃"}, {"big": 2**70, "at": ts}):  # the second is past orjson
        line = event_line(Event("r", 3, ts, "progress", "s", None, 1, data))
        assert line == json.dumps(json.loads(line), separators=(",", ":"), ensure_ascii=False)  # one compact line
        assert json.loads(line) == {
            "seq": 3, "run_id": "r", "ts": "2026-01-02T03:04:05.000678+00:00", "type": "progress", "step": "s",
            "item": None, "attempt": 1, "data": json.loads(json.dumps(data, default=datetime.isoformat)),
        }


def test_an_event_line_is_the_same_whichever_json_writer_wrote_it():
    """orjson writes lines; json writes what orjson refuses (an integer past 64 bits), as orjson would."""
    import math
    import uuid
    from datetime import datetime, timezone
    from enum import Enum

    from statepipe.store.records import Event
    from statepipe.views.jsonl import event_line

    class Colour(Enum):
        RED = "red"

    ts = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    data = {"score": math.nan, "colour": Colour.RED, uuid.UUID(int=1): "by id", ts: "at", 7: [math.inf]}

    def line_data(d: dict[Any, Any]) -> Any:
        return json.loads(event_line(Event("r", 1, ts, "progress", "s", None, 1, d)))["data"]

    plain = line_data(data)
    assert plain == {"score": None, "colour": "red", str(uuid.UUID(int=1)): "by id", ts.isoformat(): "at", "7": [None]}
    assert line_data({**data, "big": 2**70}) == {**plain, "big": 2**70}
