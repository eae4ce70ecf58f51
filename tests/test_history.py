"""History at scale (issue 17): `prune` deletes old finished runs with all their rows and event
files, and nothing else; `db status` shows the database's size and rows; `inspect` of a wide
run reads it a page at a time and shows exactly what reading it whole showed.

Runs are made real (the engine or the CLI) and then aged by moving their timestamps back."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import psycopg
from conftest import TEST_WORKFLOWS, run_here, workflow_path
from rich.console import Console

DIAMOND = "iter_diamond"
TABLES = ("runs", "steps", "attempts", "events")


def _ok(done: Any) -> Any:
    assert done.returncode == 0, done.stderr
    return done


def _cli_run(cli: Any, workflow: str, *args: str) -> str:
    done = _ok(cli("run", workflow_path(workflow), *args))
    return str(json.loads(done.stdout.splitlines()[0])["run_id"])


def _age(db_url: str, run_id: str, days: float, **columns: Any) -> None:
    """Move the run's creation and end `days` back (and set other columns of its row)."""
    sets = {"created_at": "created_at - make_interval(days => %(days)s)",
            "finished_at": "finished_at - make_interval(days => %(days)s)", **{c: f"%({c})s" for c in columns}}
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            f"UPDATE statepipe.runs SET {', '.join(f'{c} = {v}' for c, v in sets.items())} WHERE id = %(id)s",
            {"days": days, "id": run_id, **columns},
        )


def _rows(db_url: str, run_id: str) -> dict[str, int]:
    with psycopg.connect(db_url) as conn:
        return {
            t: conn.execute(f"SELECT count(*) FROM statepipe.{t} WHERE {'id' if t == 'runs' else 'run_id'} = %s", (run_id,)).fetchone()[0]
            for t in TABLES
        }


def _prune(cli: Any, *args: str) -> dict[str, Any]:
    return json.loads(_ok(cli("prune", *args, "--json")).stdout)


def test_prune_deletes_old_finished_runs_with_all_their_rows_and_files(cli, db_url, output_dir):
    old, recent = _cli_run(cli, DIAMOND), _cli_run(cli, DIAMOND)
    files = {r: output_dir / f"{r}.jsonl" for r in (old, recent)}
    assert all(f.exists() for f in files.values())
    before = _rows(db_url, old)
    _age(db_url, old, 40)

    report = _prune(cli, "--older-than", "30d")

    assert _rows(db_url, old) == dict.fromkeys(TABLES, 0)
    assert not files[old].exists()
    assert report["dry_run"] is False and report["files"] == 1
    assert {t: report[t] for t in TABLES} == before
    assert _rows(db_url, recent)["steps"] == before["steps"] and files[recent].exists()


def test_prune_finds_a_runs_file_in_the_folder_it_was_started_in(cli, db_url, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    run_id = _cli_run(cli, DIAMOND, "--output-dir", str(elsewhere))
    _age(db_url, run_id, 40)

    assert _prune(cli, "--older-than", "30d")["files"] == 1
    assert not (elsewhere / f"{run_id}.jsonl").exists()


def test_prune_never_deletes_an_unfinished_run(cli, store, db_url):
    unfinished = {state: run_here(store, DIAMOND) for state in ("running", "pending", "paused", "waiting")}
    for state, run_id in unfinished.items():
        _age(db_url, run_id, 40, state=state, finished_at=None)
    retried = run_here(store, DIAMOND, env={"ITER_FAIL": "final"})  # failed, but a worker is asked to retry it
    _age(db_url, retried, 40, requested="retry")

    done = _ok(cli("prune", "--older-than", "30d"))

    assert "nothing to prune" in done.stderr
    assert all(_rows(db_url, r)["runs"] == 1 for r in [*unfinished.values(), retried])


def test_prune_refuses_a_state_that_is_not_finished(cli):
    done = cli("prune", "--older-than", "30d", "--state", "running")
    assert done.returncode != 0 and "finished runs only" in done.stderr


def test_prune_deletes_only_the_states_asked_for(cli, store, db_url):
    succeeded, failed = run_here(store, DIAMOND), run_here(store, DIAMOND, env={"ITER_FAIL": "final"})
    assert store.get_run(failed).state == "failed"
    for run_id in (succeeded, failed):
        _age(db_url, run_id, 40)

    assert _prune(cli, "--older-than", "30d", "--state", "failed")["runs"] == 1

    assert _rows(db_url, failed)["runs"] == 0 and _rows(db_url, succeeded)["runs"] == 1


def test_prune_keeps_each_workflows_newest_runs(cli, store, db_url):
    diamonds = [run_here(store, DIAMOND) for _ in range(3)]
    echoes = [run_here(store, "echo") for _ in range(2)]
    for age, run_id in enumerate([*diamonds, *echoes]):
        _age(db_url, run_id, 40 + age)  # the first of each list is its workflow's newest

    assert _prune(cli, "--older-than", "30d", "--keep-last", "1")["runs"] == 3

    assert [_rows(db_url, r)["runs"] for r in diamonds] == [1, 0, 0]
    assert [_rows(db_url, r)["runs"] for r in echoes] == [1, 0]


def test_prune_dry_run_counts_what_prune_deletes_and_changes_nothing(cli, db_url, output_dir):
    run_id = _cli_run(cli, DIAMOND)
    _age(db_url, run_id, 40)
    before = _rows(db_url, run_id)

    dry = _prune(cli, "--older-than", "30d", "--dry-run")

    assert _rows(db_url, run_id) == before and (output_dir / f"{run_id}.jsonl").exists()
    real = _prune(cli, "--older-than", "30d")
    assert {**dry, "cutoff": None} == {**real, "dry_run": True, "cutoff": None} and real["runs"] == 1


def test_a_fork_of_a_pruned_run_still_inspects_resumes_and_reruns(cli, store, db_url):
    source = run_here(store, DIAMOND)
    result = store.snapshot(source).result()
    done = _ok(cli("fork", source, "--from", "left", "--detach"))
    fork = done.stdout.strip()
    _age(db_url, source, 40)
    assert _prune(cli, "--older-than", "30d")["runs"] == 1

    _ok(cli("resume", fork))
    doc = json.loads(_ok(cli("inspect", fork, "--json")).stdout)
    assert doc["run"]["state"] == "succeeded" and doc["run"]["forked_from"] == source
    assert _ok(cli("inspect", fork)).stdout
    _ok(cli("rerun", fork, "--from", "root"))
    assert store.get_run(fork).state == "succeeded"
    assert store.snapshot(fork).result() == result


def test_db_status_shows_the_database_size_and_rows_per_table(cli, store):
    run_here(store, DIAMOND)

    status = json.loads(_ok(cli("db", "status", "--json")).stdout)

    assert status["database_bytes"] > 0
    with psycopg.connect(store.pool.conninfo) as conn:
        for t in TABLES:
            exact = conn.execute(f"SELECT count(*) FROM statepipe.{t}").fetchone()[0]
            assert status["tables"][t] == {"rows": exact, "estimated": False, "bytes": status["tables"][t]["bytes"]}
            assert status["tables"][t]["bytes"] > 0
    text = _ok(cli("db", "status")).stdout
    assert "size " in text and "events " in text and "rows" in text


def test_inspect_json_of_a_wide_run_is_the_document_built_whole(cli, store):
    from statepipe.views.render import inspect_json

    run_id = run_here(store, "wide_doc", width=1000)
    snap = store.snapshot(run_id)
    assert len(snap.children("child")) == 1000 and any(len(c.attempts) == 2 for c in snap.children("child"))
    whole = json.dumps(inspect_json(snap, store.forks_of(run_id)), indent=2, ensure_ascii=False, default=str) + "\n"

    streamed = cli("inspect", run_id, "--json")

    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == whole


def test_json_read_a_page_at_a_time_is_what_a_value_at_a_time_reads():
    from statepipe.store.store import _loads, _loads_all

    plain = [None, "null", '{"a": [1, 2.5, "é"]}', "1e-07", '"text"']
    for texts in (plain, [*plain, str(2**70)], [*plain, "1e400"]):  # orjson's reading; json's, for either number
        assert _loads_all(texts) == [None if t is None else _loads(t) for t in texts]
    assert _loads_all([str(2**70)]) == [2**70] and _loads_all(["1e400"]) == [float("inf")]


def test_inspect_of_a_wide_run_reads_some_children_and_shows_what_reading_all_showed(store):
    from statepipe.views.render import inspect_view

    run_id = run_here(store, "wide_doc", width=1200, fail=1150)
    some = store.snapshot(run_id, preview=True, some_children=True)
    assert some.widths == {"child": 1200} and len(some.steps) < 300
    # the failed child, far past the first ones (and any its failure left unstarted), is read
    assert "1150" in [c.item for c in some.children("child") if c.state != "succeeded"]

    def shown(snap: Any) -> str:
        console = Console(file=io.StringIO(), width=120, color_system=None)
        console.print(inspect_view(snap, []))
        return re.sub(r"· \S+ since created", "", str(console.file.getvalue()))  # type: ignore[attr-defined]  # read twice: time goes on

    assert shown(some) == shown(store.snapshot(run_id, preview=True))


def test_pruned_event_files_of_other_runs_stay(cli, db_url, output_dir):
    run_id = _cli_run(cli, DIAMOND)
    stray = Path(output_dir) / "not-a-run.jsonl"
    stray.write_text("{}\n")
    _age(db_url, run_id, 40)

    _prune(cli, "--older-than", "30d")

    assert stray.exists() and (output_dir / "results.jsonl").exists()


def _family(cli: Any, store: Any) -> tuple[str, list[str]]:
    """A run of tests/workflows/parent.py, and the ids of the four child runs it started."""
    done = _ok(cli("run", workflow_path("parent"), STATEPIPE_WORKFLOWS_PATH=str(TEST_WORKFLOWS)))
    parent = str(json.loads(done.stdout.splitlines()[0])["run_id"])
    children = [c.id for c in store.snapshot(parent).child_runs]
    assert len(children) == 4
    return parent, children


def test_prune_never_deletes_a_child_workflows_run_while_its_parent_stays(cli, store, db_url):
    parent, children = _family(cli, store)
    for child in children:
        _age(db_url, child, 40)

    done = _ok(cli("prune", "--older-than", "30d"))

    assert "nothing to prune" in done.stderr
    assert sorted(c.id for c in store.snapshot(parent).child_runs) == sorted(children)


def test_prune_deletes_a_parent_with_its_child_workflows_runs_and_a_dry_run_counts_them(cli, store, db_url):
    parent, children = _family(cli, store)
    for run_id in (parent, *children):
        _age(db_url, run_id, 40)

    dry = _prune(cli, "--older-than", "30d", "--dry-run")
    real = _prune(cli, "--older-than", "30d")

    assert dry["runs"] == real["runs"] == 5
    assert all(_rows(db_url, r) == dict.fromkeys(TABLES, 0) for r in (parent, *children))
