"""`statepipe fork` (a new run sharing the source's upstream outputs) and caching across runs
(`cache=True`: a step whose cache key matches a succeeded attempt of any run reuses it).

Every assertion reads the store: runs, steps, attempts (their `cached_from`) and events. That a
step's function did not execute is proven by the side-effect file its body appends to
(ITER_TRACE, see tests/workflows/iter_cache.py and iter_diamond.py).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from conftest import all_events, run_here, step_of, workflow_path

DIAMOND = "iter_diamond"
CACHE = "iter_cache"


def _ok(done: Any) -> None:
    assert done.returncode == 0, done.stderr


def _cli_run(cli: Any, workflow: str, *args: str, **env: str) -> str:
    done = cli("run", workflow, *args, **env)
    _ok(done)
    return json.loads(done.stdout.splitlines()[0])["run_id"]


def _traced(trace: Path, run_id: str) -> list[str]:
    """Step bodies that executed for this run, in order."""
    if not trace.exists():
        return []
    return [line.split(" ", 1)[1] for line in trace.read_text().splitlines() if line.startswith(run_id + " ")]


def _cached_steps(store: Any, run_id: str) -> dict[str, dict[str, Any]]:
    return {e.step: e.data["source"] for e in all_events(store, run_id) if e.type == "step_cached"}


def _started(store: Any, run_id: str) -> set[str]:
    return {e.step for e in all_events(store, run_id) if e.type == "step_started"}


def _fork(cli: Any, store: Any, run_id: str, *args: str) -> str:
    done = cli("fork", run_id, *args)
    _ok(done)
    (new_id,) = store.forks_of(run_id)
    assert f"forked {run_id} -> {new_id}" in done.stderr
    return new_id


# -- fork ---------------------------------------------------------------------------------------


def test_fork_creates_a_new_run_linked_to_its_source(cli, store):
    source = run_here(store, DIAMOND, label="s")

    new_id = _fork(cli, store, source, "--from", "left")

    new = store.get_run(new_id)
    assert new_id != source
    assert new.forked_from == source
    assert store.forks_of(source) == [new_id]
    assert store.forks_of(new_id) == []
    assert (new.workflow, new.input) == ("iter_diamond", {"label": "s"})
    assert new.state == "succeeded"
    assert store.snapshot(new_id).result() == store.snapshot(source).result() == {"v": "S3:6", "fb": None}
    (created,) = [e for e in all_events(store, new_id) if e.type == "run_created"]
    assert created.data["forked_from"] == source and created.data["reused"] == ["root", "right"]


def test_fork_copies_upstream_attempts_without_executing_them(cli, store, tmp_path, monkeypatch):
    trace = tmp_path / "trace"
    monkeypatch.setenv("ITER_TRACE", str(trace))
    source = run_here(store, DIAMOND)
    src = store.snapshot(source)

    new_id = _fork(cli, store, source, "--from", "left")

    new = store.snapshot(new_id)
    for name in ("root", "right"):
        (copy,) = step_of(new, name).attempts
        (orig,) = step_of(src, name).attempts
        assert copy.cached_from == {"run_id": source, "step": name, "item": None, "number": 1}
        assert (copy.number, copy.state, copy.output) == (orig.number, orig.state, orig.output)
        assert step_of(new, name).state == "succeeded"
    assert not _started(store, new_id) & {"root", "right"}
    assert not {"root", "right"} & set(_traced(trace, new_id))


def test_fork_executes_the_chosen_step_and_its_descendants(cli, store, tmp_path, monkeypatch):
    trace = tmp_path / "trace"
    monkeypatch.setenv("ITER_TRACE", str(trace))
    source = run_here(store, DIAMOND)

    new_id = _fork(cli, store, source, "--from", "left")

    new = store.snapshot(new_id)
    assert _started(store, new_id) == {"left", "join", "final"}
    assert sorted(_traced(trace, new_id)) == ["final", "join", "left"]
    for name in ("left", "join", "final"):
        (attempt,) = step_of(new, name).attempts
        assert (attempt.number, attempt.state, attempt.cached_from) == (1, "succeeded", None)


def test_fork_leaves_the_original_run_untouched(cli, store):
    source = run_here(store, DIAMOND)
    before = store.snapshot(source)
    events_before = all_events(store, source)

    _fork(cli, store, source, "--from", "left")

    after = store.snapshot(source)
    assert all_events(store, source) == events_before
    assert {s.key: s.attempts for s in after.steps} == {s.key: s.attempts for s in before.steps}
    assert [(s.key, s.state, s.attempt) for s in after.steps] == [(s.key, s.state, s.attempt) for s in before.steps]
    assert (after.run.state, after.run.forked_from, after.run.last_seq) == ("succeeded", None, before.run.last_seq)


# -- cache ----------------------------------------------------------------------------------------


def test_cache_hit_reuses_the_step_with_an_event_naming_the_source_run(cli, store, tmp_path):
    trace = tmp_path / "trace"
    first = _cli_run(cli, workflow_path(CACHE), "-i", "x=1", ITER_TRACE=str(trace))

    second = _cli_run(cli, workflow_path(CACHE), "-i", "x=1", ITER_TRACE=str(trace))

    cached = _cached_steps(store, second)
    assert cached["base"] == {"run_id": first, "step": "base", "item": None, "number": 1}
    assert cached["use"] == {"run_id": first, "step": "use", "item": None, "number": 1}
    snap = store.snapshot(second)
    for name in ("base", "use"):
        (attempt,) = step_of(snap, name).attempts
        assert attempt.state == "succeeded"
        assert attempt.cached_from == {"run_id": first, "step": name, "item": None, "number": 1}
        assert attempt.output == step_of(store.snapshot(first), name).output
    assert snap.run.state == "succeeded" and snap.result() == store.snapshot(first).result()


def test_cache_hit_does_not_execute_the_step_function(cli, store, tmp_path):
    trace = tmp_path / "trace"
    first = _cli_run(cli, workflow_path(CACHE), "-i", "x=1", ITER_TRACE=str(trace))
    assert sorted(_traced(trace, first)) == ["base", "short", "use"]

    second = _cli_run(cli, workflow_path(CACHE), "-i", "x=1", ITER_TRACE=str(trace))

    assert {"base", "use"} <= set(_cached_steps(store, second))
    assert not {"base", "use"} & set(_traced(trace, second))


def test_cache_misses_on_a_different_input(store, tmp_path):
    trace = tmp_path / "trace"
    run_here(store, CACHE, env={"ITER_TRACE": str(trace)}, x=1)

    second = run_here(store, CACHE, env={"ITER_TRACE": str(trace)}, x=2)

    assert _cached_steps(store, second) == {}
    assert sorted(_traced(trace, second)) == ["base", "short", "use"]
    assert all(a.cached_from is None for s in store.snapshot(second).steps for a in s.attempts)
    assert store.snapshot(second).result() == {"use": 21, "short": 102}


def test_no_cache_flag_computes_every_step(cli, store, tmp_path):
    trace = tmp_path / "trace"
    run_here(store, CACHE, env={"ITER_TRACE": str(trace)}, x=1)

    second = _cli_run(cli, workflow_path(CACHE), "-i", "x=1", "--no-cache", ITER_TRACE=str(trace))

    assert store.get_run(second).no_cache
    assert _cached_steps(store, second) == {}
    assert sorted(_traced(trace, second)) == ["base", "short", "use"]
    assert all(a.cached_from is None for s in store.snapshot(second).steps for a in s.attempts)


def test_cache_misses_when_the_step_version_changes(cli, store, tmp_path):
    trace = tmp_path / "trace"
    path = tmp_path / "iter_cache.py"
    shutil.copy(workflow_path(CACHE), path)
    first = run_here(store, str(path), env={"ITER_TRACE": str(trace)}, x=1)
    text = path.read_text()
    assert text.count('@wf.step(version="1")') == 1
    path.write_text(text.replace('@wf.step(version="1")', '@wf.step(version="2")'))

    second = _cli_run(cli, str(path), "-i", "x=1", ITER_TRACE=str(trace))

    cached = _cached_steps(store, second)
    assert "base" not in cached and "base" in _traced(trace, second)
    # only the version changed: base's output is the same, so `use` (same code, same input) still hits
    assert cached["use"]["run_id"] == first and "use" not in _traced(trace, second)


def test_cache_expires_after_its_ttl(store, tmp_path):
    trace = tmp_path / "trace"
    env = {"ITER_TRACE": str(trace)}
    first = run_here(store, CACHE, env=env, x=1)
    computed = step_of(store.snapshot(first), "short").finished_at
    time.sleep(max(0.0, 1.6 - (time.time() - computed.timestamp())))  # short's cache_ttl is 1.5 s

    second = run_here(store, CACHE, env=env, x=1)

    cached = _cached_steps(store, second)
    assert "short" not in cached and "short" in _traced(trace, second)
    assert "base" in cached  # no ttl: still reused


def test_cache_ttl_counts_from_when_the_output_was_computed(store, tmp_path):
    """A hit within the ttl must not make the output young again: after the ttl of the run that
    computed it, a third run computes the step anew."""
    trace = tmp_path / "trace"
    env = {"ITER_TRACE": str(trace)}
    first = run_here(store, CACHE, env=env, x=1)
    computed = step_of(store.snapshot(first), "short").finished_at.timestamp()
    time.sleep(max(0.0, 0.5 - (time.time() - computed)))
    second = run_here(store, CACHE, env=env, x=1)
    assert _cached_steps(store, second)["short"]["run_id"] == first  # within the ttl: a hit
    time.sleep(max(0.0, 1.6 - (time.time() - computed)))  # first's output is now older than 1.5 s
    assert time.time() - step_of(store.snapshot(second), "short").finished_at.timestamp() < 1.4

    third = run_here(store, CACHE, env=env, x=1)

    assert "short" not in _cached_steps(store, third)
    assert "short" in _traced(trace, third)


def test_rerun_from_a_cacheable_step_executes_it_again(cli, store, tmp_path):
    trace = tmp_path / "trace"
    run_id = run_here(store, CACHE, env={"ITER_TRACE": str(trace)}, x=1)

    done = cli("rerun", run_id, "--from", "base", ITER_TRACE=str(trace))

    assert done.returncode == 0, done.stderr
    events = all_events(store, run_id)
    rerun = next(e for e in events if e.type == "rerun")
    assert not [e for e in events if e.seq > rerun.seq and e.type == "step_cached"]
    assert sorted(_traced(trace, run_id)[3:]) == ["base", "use"]  # after the first run's three steps
    assert [(a.number, a.cached_from) for a in step_of(store.snapshot(run_id), "base").attempts] == [(1, None), (2, None)]


def test_inspect_shows_which_run_a_cached_step_came_from(cli, store, tmp_path):
    first = _cli_run(cli, workflow_path(CACHE), "-i", "x=1")
    second = _cli_run(cli, workflow_path(CACHE), "-i", "x=1")
    shown = cli("inspect", second, COLUMNS="200")  # wide enough that the cell is not folded
    assert shown.returncode == 0, shown.stderr
    assert f"#1 succeeded (from {first[:8]} base #1)" in shown.stdout
