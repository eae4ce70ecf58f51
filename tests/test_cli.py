"""The `statepipe` command as users and scripts meet it: run, inspect, list, logs, workflows,
graph; how input is given; what a failure looks like (one line on stderr, a documented exit
code, nothing lost); and the JSONL files a run leaves in the output folder.

Exit codes: 0 ok, 1 run failed, 2 bad input or definition, 3 unknown workflow or run,
4 conflict with the run's state, 5 database unreachable, 130 interrupted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, cli_env, error_message, workflow_path

CRASHY = workflow_path("crashy")
FAST = ("-i", "pause=0", "-i", "items=3")

RUN_KEYS = {"id", "workflow", "state", "input", "result", "error", "created_at", "started_at", "finished_at"}
STEP_KEYS = {"name", "item", "state", "depends_on", "output", "error", "attempts"}
ATTEMPT_KEYS = {"number", "state", "started_at", "finished_at", "error"}

# crashy with items=3, worked out by hand from tests/workflows/crashy.py
CRASHY3_OUTPUTS = {
    ("seed", None): [{"n": 0, "label": "item-0"}, {"n": 1, "label": "item-1"}, {"n": 2, "label": "item-2"}],
    ("left", None): 3,
    ("right", None): "item-0-item-1-item-2",
    ("fan", None): [{"n": 0, "square": 0}, {"n": 1, "square": 1}, {"n": 2, "square": 4}],
    ("fan", "0"): {"n": 0, "square": 0},
    ("fan", "1"): {"n": 1, "square": 1},
    ("fan", "2"): {"n": 2, "square": 4},
    ("join", None): {"squares": [0, 1, 4], "left": 3, "right": "item-0-item-1-item-2"},
    ("final", None): {"total": 8, "right": "item-0-item-1-item-2"},
}
CRASHY_DEPENDS = {
    "seed": [],
    "left": ["seed"],
    "right": ["seed"],
    "fan": ["seed"],
    "join": ["fan", "left", "right"],
    "final": ["join"],
}


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def _run(cli: Any, *args: str, expect: int = 0, **kw: Any) -> str:
    """Run a workflow (stdout piped: JSON events); its run id."""
    done = cli("run", *args, **kw)
    assert done.returncode == expect, done.stderr
    return _events(done.stdout)[0]["run_id"]


def _ts(text: str) -> datetime:
    ts = datetime.fromisoformat(text)
    assert ts.tzinfo is not None
    return ts


# -- run ---------------------------------------------------------------------------------------


def test_run_prints_the_run_id_first(cli):
    done = cli("run", CRASHY, *FAST)
    assert done.returncode == 0, done.stderr
    run_id = _events(done.stdout)[0]["run_id"]
    assert done.stderr.splitlines()[0] == f"run {run_id}"
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", run_id)


def test_piped_run_writes_one_json_event_per_line(cli, store):
    done = cli("run", CRASHY, *FAST)
    events = _events(done.stdout)
    run_id = events[0]["run_id"]
    assert all(set(e) == {"seq", "run_id", "ts", "type", "step", "item", "attempt", "data"} for e in events)
    assert [e["seq"] for e in events] == list(range(1, store.get_run(run_id).last_seq + 1))
    started = {(e["step"], e["item"]) for e in events if e["type"] == "step_started"}
    assert started == set(CRASHY3_OUTPUTS)


def test_sync_and_async_steps_both_run(cli, store):
    run_id = _run(cli, workflow_path("mixed"), "-i", "x=5")
    snap = store.snapshot(run_id)
    assert snap.run.state == "succeeded"
    assert snap.result() == [50, 6]


def test_step_with_false_condition_is_skipped_and_dependents_receive_none(cli, store):
    run_id = _run(cli, workflow_path("conditional"), "-i", "n=1")
    snap = store.snapshot(run_id)
    big = next(s for s in snap.steps if s.name == "big")
    assert big.state == "skipped" and big.attempts == []
    assert snap.run.state == "succeeded"
    assert snap.result() == {"big": None, "base": 1}


def test_step_with_true_condition_runs(cli, store):
    run_id = _run(cli, workflow_path("conditional"), "-i", "n=9")
    snap = store.snapshot(run_id)
    assert next(s for s in snap.steps if s.name == "big").state == "succeeded"
    assert snap.result() == {"big": "big 9", "base": 9}


def test_step_returning_a_non_json_value_fails_the_run_clearly(cli, store):
    done = cli("run", workflow_path("nonjson"))
    assert done.returncode == 1
    run_id = _events(done.stdout)[0]["run_id"]
    stderr = " ".join(done.stderr.split())
    assert "step unique returned set, which cannot be stored as JSON" in stderr
    assert "Traceback" not in done.stderr
    snap = store.snapshot(run_id)
    assert snap.run.state == "failed"
    unique = next(s for s in snap.steps if s.name == "unique")
    assert unique.state == "failed"
    assert [a.state for a in unique.attempts] == ["failed"]
    assert "returned set, which cannot be stored as JSON" in unique.error
    # what was stored before the failure is kept
    assert next(s for s in snap.steps if s.name == "numbers").output == [3, 1, 2]


def test_failed_run_exits_1_and_says_how_to_retry(cli, store):
    done = cli("run", workflow_path("failing"))
    assert done.returncode == 1
    run_id = _events(done.stdout)[0]["run_id"]
    stderr = " ".join(done.stderr.split())
    assert "failed: step explode failed: RuntimeError: boom after 41" in stderr
    assert f"statepipe resume {run_id}" in stderr
    assert store.get_run(run_id).error == "step explode failed: RuntimeError: boom after 41"


def test_piped_run_stops_when_the_reader_leaves_and_stays_resumable(cli, spawn, store):
    # `statepipe run x | head -1`: the reader went away, as a first Ctrl-C would say: no new
    # steps, the process exits promptly (130), and the run resumes to success
    proc = spawn("run", CRASHY, "-i", "pause=0.2", "-i", "items=3")
    run_id = json.loads(proc.stdout.readline())["run_id"]
    proc.stdout.close()
    assert proc.wait(timeout=60) == 130
    assert store.get_run(run_id).shown_state == "interrupted"
    assert cli("resume", run_id).returncode == 0
    assert store.get_run(run_id).state == "succeeded"


def test_piped_run_whose_reader_left_before_it_began_stops_and_stays_resumable(cli, store):
    # the stdout watch sees the reader gone at once, while the process is still creating the
    # run: that stop is not lost either (it once was, as `| head -1` sometimes showed above)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            cli.argv("run", CRASHY, "-i", "pause=0.2", "-i", "items=3"),
            cwd=REPO, env=cli_env(), stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 130, done.stderr
    run_id = done.stderr.splitlines()[0].removeprefix("run ")
    assert store.get_run(run_id).shown_state == "interrupted"
    assert cli("resume", run_id).returncode == 0
    assert store.get_run(run_id).state == "succeeded"


# -- input ---------------------------------------------------------------------------------------


def test_input_values_are_read_as_json_when_they_parse(cli, store):
    run_id = _run(
        cli, workflow_path("echo"),
        "-i", "n=3", "-i", "ratio=0.5", "-i", "flag=true", "-i", "nothing=null",
        "-i", "xs=[1, 2]", "-i", 'obj={"a": {"b": 1}}', "-i", 'quoted="3"',
        "-i", "word=hello", "-i", "empty=", "-i", "eq=a=b", "-i", "spaced=two words",
    )
    assert store.snapshot(run_id).result() == {
        "n": 3, "ratio": 0.5, "flag": True, "nothing": None, "xs": [1, 2], "obj": {"a": {"b": 1}},
        "quoted": "3", "word": "hello", "empty": "", "eq": "a=b", "spaced": "two words",
    }
    assert store.get_run(run_id).input["n"] == 3


def test_input_file_gives_the_input_and_i_overrides_it(cli, store, tmp_path):
    path = tmp_path / "in.json"
    path.write_text(json.dumps({"topic": "durable", "depth": 2, "tags": ["a", "b"]}))
    run_id = _run(cli, workflow_path("echo"), "--input-file", str(path), "-i", "depth=5")
    assert store.snapshot(run_id).result() == {"topic": "durable", "depth": 5, "tags": ["a", "b"]}


def test_input_file_dash_reads_json_from_stdin(cli, store):
    run_id = _run(cli, workflow_path("echo"), "--input-file", "-", input='{"from": "stdin", "n": [1]}')
    assert store.snapshot(run_id).result() == {"from": "stdin", "n": [1]}


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("--input-file", "-"), '{"topic": ', "invalid JSON in stdin"),
        (("--input-file", "-"), "[1, 2]", "input in stdin must be a JSON object, got list"),
        (("-i", "novalue"), None, "invalid -i 'novalue': expected key=value"),
        (("-i", "=3"), None, "invalid -i '=3': expected key=value"),
        (("-i", "bad key=3"), None, "invalid -i 'bad key=3': expected key=value"),
    ],
    ids=["invalid-json", "json-not-an-object", "no-equals", "no-key", "bad-key"],
)
def test_bad_input_exits_2_and_creates_no_run(cli, store, args, stdin, message):
    done = cli("run", workflow_path("echo"), *args, input=stdin)
    assert done.returncode == 2
    assert message in error_message(done)
    assert done.stdout == ""
    assert store.list_runs() == []


def test_invalid_json_input_file_exits_2_naming_the_file(cli, store, tmp_path):
    path = tmp_path / "in.json"
    path.write_text('{"a": 1,}')
    done = cli("run", workflow_path("echo"), "--input-file", str(path))
    assert done.returncode == 2
    assert "invalid JSON in" in error_message(done) and "in.json" in error_message(done)
    assert store.list_runs() == []


def test_missing_input_file_exits_2(cli, store, tmp_path):
    done = cli("run", workflow_path("echo"), "--input-file", str(tmp_path / "nope.json"))
    assert done.returncode == 2
    assert "cannot read input file" in error_message(done)
    assert store.list_runs() == []


# -- inspect ---------------------------------------------------------------------------------------


def test_inspect_json_documents_the_run_and_every_step(cli, store):
    run_id = _run(cli, CRASHY, *FAST)
    doc = cli.json("inspect", run_id, "--json")

    run = doc["run"]
    assert RUN_KEYS <= set(run)
    assert run["id"] == run_id and run["workflow"] == "crashy" and run["state"] == "succeeded"
    assert run["input"] == {"pause": 0, "items": 3}
    assert run["result"] == CRASHY3_OUTPUTS[("final", None)]
    assert run["error"] is None
    assert _ts(run["created_at"]) <= _ts(run["started_at"]) <= _ts(run["finished_at"])

    steps = {(s["name"], s["item"]): s for s in doc["steps"]}
    assert len(doc["steps"]) == len(steps) == 9  # 6 steps + 3 fan-out children
    for key, step in steps.items():
        assert STEP_KEYS <= set(step), key
        assert step["state"] == "succeeded" and step["error"] is None
        assert step["output"] == CRASHY3_OUTPUTS[key], key
        assert step["depends_on"] == CRASHY_DEPENDS[step["name"]], key
        assert len(step["attempts"]) == 1
        attempt = step["attempts"][0]
        assert ATTEMPT_KEYS <= set(attempt)
        assert attempt["number"] == 1 and attempt["state"] == "succeeded" and attempt["error"] is None
        assert _ts(attempt["started_at"]) <= _ts(attempt["finished_at"])
    # a fan-out child's item is its key; everything else has item null
    assert sorted(k[1] for k in steps if k[1] is not None) == ["0", "1", "2"]


def test_inspect_json_of_a_failed_run_shows_the_error_on_run_step_and_attempt(cli):
    run_id = _run(cli, workflow_path("failing"), expect=1)
    doc = cli.json("inspect", run_id, "--json")
    assert doc["run"]["state"] == "failed"
    assert doc["run"]["result"] is None
    assert doc["run"]["error"] == "step explode failed: RuntimeError: boom after 41"
    explode = next(s for s in doc["steps"] if s["name"] == "explode")
    assert explode["state"] == "failed" and explode["output"] is None
    assert explode["error"] == "RuntimeError: boom after 41"
    assert [(a["number"], a["state"], a["error"]) for a in explode["attempts"]] == [
        (1, "failed", "RuntimeError: boom after 41")
    ]


def test_inspect_accepts_a_unique_prefix_of_the_run_id(cli):
    run_id = _run(cli, CRASHY, *FAST)
    assert cli.json("inspect", run_id[:8], "--json")["run"]["id"] == run_id


def test_inspect_for_people_shows_run_steps_and_outputs(cli):
    run_id = _run(cli, CRASHY, *FAST)
    done = cli("inspect", run_id)
    assert done.returncode == 0, done.stderr
    assert run_id in done.stdout and "succeeded" in done.stdout
    for name in CRASHY_DEPENDS:
        assert name in done.stdout
    assert "item-0-item-1-item-2" in done.stdout


def test_inspect_truncates_long_values_and_says_how_to_see_them(cli):
    run_id = _run(cli, workflow_path("echo"), "-i", f"text={'x' * 3000}")
    short = cli("inspect", run_id)
    full = cli("inspect", run_id, "--full")
    assert short.returncode == 0 and full.returncode == 0
    assert re.search(r"\(the whole value is [\d,]+ characters of JSON; --full shows all\)", short.stdout)
    assert "--full shows all" not in full.stdout


def test_inspect_full_shows_long_values_whole(cli):
    run_id = _run(cli, workflow_path("echo"), "-i", f"text={'x' * 3000}")
    full = cli("inspect", run_id, "--full")
    assert full.returncode == 0
    # the value appears whole in the input and the result (the step's line points to the result)
    assert full.stdout.count("x") >= 2 * 3000


# -- list ----------------------------------------------------------------------------------------


def test_list_json_gives_runs_shaped_like_inspect_newest_first(cli):
    first = _run(cli, CRASHY, *FAST)
    failed = _run(cli, workflow_path("failing"), expect=1)
    last = _run(cli, workflow_path("echo"), "-i", "a=1")
    runs = cli.json("list", "--json")
    assert [r["id"] for r in runs] == [last, failed, first]
    for r in runs:
        inspected = cli.json("inspect", r["id"], "--json")["run"]
        assert set(r) == set(inspected)
        assert r == inspected
    assert [r["state"] for r in runs] == ["succeeded", "failed", "succeeded"]
    assert runs[0]["result"] == {"a": 1}


def test_list_filters_by_status_workflow_limit_and_since(cli):
    ok = _run(cli, CRASHY, *FAST)
    failed = _run(cli, workflow_path("failing"), expect=1)
    echo = _run(cli, workflow_path("echo"), "-i", "a=1")

    def ids(*args: str) -> list[str]:
        return [r["id"] for r in cli.json("list", "--json", *args)]

    assert ids("--status", "failed") == [failed]
    assert ids("--status", "succeeded") == [echo, ok]
    assert ids("--status", "failed", "--status", "succeeded") == [echo, failed, ok]
    assert ids("--status", "running") == []
    assert ids("--workflow", "crashy") == [ok]
    assert ids("--workflow", "failing", "--status", "succeeded") == []
    assert ids("--limit", "2") == [echo, failed]
    assert ids("--since", "1h") == [echo, failed, ok]
    assert ids("--since", "2999-01-01") == []
    assert ids("--since", "2000-01-01T00:00:00+00:00", "--limit", "1") == [echo]


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--status", "done"), "unknown state 'done'"), (("--since", "yesterday"), "invalid --since 'yesterday'")],
    ids=["unknown-status", "bad-since"],
)
def test_list_refuses_bad_filters_with_exit_2(cli, args, message):
    done = cli("list", *args)
    assert done.returncode == 2
    assert message in error_message(done)


def test_list_table_shows_id_workflow_state_and_steps(cli):
    run_id = _run(cli, CRASHY, *FAST)
    done = cli("list")
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if run_id[:8] in line)
    assert "crashy" in row and "succeeded" in row and "6/6" in row


# -- logs ----------------------------------------------------------------------------------------


def test_logs_replays_exactly_what_the_piped_run_printed(cli):
    done = cli("run", CRASHY, *FAST)
    printed = _events(done.stdout)
    logged = _events(cli("logs", printed[0]["run_id"]).stdout)
    assert len(logged) == len(printed)
    for live, replay in zip(printed, logged):
        assert {k: v for k, v in live.items() if k != "ts"} == {k: v for k, v in replay.items() if k != "ts"}
        assert _ts(live["ts"]) == _ts(replay["ts"])


# -- workflows and graph -------------------------------------------------------------------------


def test_workflows_lists_every_workflow_of_the_repo(cli):
    found = cli.json("workflows", "--json")
    files = sorted(p for p in (REPO / "workflows").glob("*.py") if not p.name.startswith("_"))
    assert files, "the repository ships workflows"
    assert sorted(Path(w["ref"].rsplit(":", 1)[0]) for w in found) == files
    assert all(w["error"] is None and w["steps"] > 0 for w in found)
    assert {"montecarlo", "document"} <= {w["name"] for w in found}
    table = cli("workflows")
    assert table.returncode == 0
    for w in found:
        assert w["name"] in table.stdout


def test_workflows_lists_a_broken_file_with_its_error(cli, tmp_path):
    (tmp_path / "broken.py").write_text("def (:\n")
    done = cli("workflows", "--json", STATEPIPE_WORKFLOWS_PATH=str(tmp_path))
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    broken = next(w for w in found if w["name"] == "broken")
    assert "syntax error" in broken["error"]


def test_graph_prints_the_dag_as_text(cli):
    done = cli("graph", CRASHY)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "crashy",
        "  seed",
        "  left  <- seed",
        "  right  <- seed",
        "  fan  <- seed  [one per item of seed]",
        "  join  <- fan, left, right",
        "  final  <- join",
    ]


def test_graph_mermaid_prints_a_flowchart_with_every_edge(cli):
    done = cli("graph", CRASHY, "--mermaid")
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stdout.splitlines()]
    assert lines[0] == "graph TD"
    edges = {tuple(line.split(" --> ")) for line in lines if " --> " in line}
    assert edges == {(d, s) for s, deps in CRASHY_DEPENDS.items() for d in deps}
    nodes = {line.split("[", 1)[0] for line in lines[1:] if " --> " not in line}
    assert nodes == set(CRASHY_DEPENDS)


def test_graph_finds_a_workflow_by_name(cli):
    done = cli("graph", "montecarlo")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "montecarlo"


# -- errors: one line, a documented exit code ----------------------------------------------------


@pytest.mark.parametrize("command", [("inspect",), ("inspect", "--json"), ("resume",), ("logs",)])
def test_unknown_run_id_exits_3(cli, command):
    missing = "0123abcd-0000-4000-8000-000000000000"
    done = cli(*command[:1], missing, *command[1:])
    assert done.returncode == 3
    assert f"no run '{missing}'" in error_message(done)


def test_malformed_run_id_exits_3(cli):
    done = cli("inspect", "not-a-run")
    assert done.returncode == 3
    assert "run ids are hexadecimal" in error_message(done)


def test_resuming_a_succeeded_run_exits_4_and_changes_nothing(cli, store):
    run_id = _run(cli, CRASHY, *FAST)
    before = store.get_run(run_id)
    done = cli("resume", run_id)
    assert done.returncode == 4
    assert f"run {run_id} already succeeded" in error_message(done)
    after = store.get_run(run_id)
    assert (after.state, after.last_seq, after.fencing_token) == (before.state, before.last_seq, before.fencing_token)


def test_resuming_a_failed_run_retries_only_what_failed(cli, store):
    run_id = _run(cli, workflow_path("failing"), expect=1)
    done = cli("resume", run_id)
    assert done.returncode == 1  # the step fails again, deterministically
    snap = store.snapshot(run_id)
    attempts = {s.name: [a.state for a in s.attempts] for s in snap.steps}
    assert attempts == {"prepare": ["succeeded"], "explode": ["failed", "failed"]}
    assert snap.run.state == "failed"
    types = [e["type"] for e in _events(done.stdout)]
    assert types[0] == "run_resumed" and "step_reset" in types and types[-1] == "run_failed"


@pytest.mark.parametrize("command", [("list",), ("inspect", "0123abcd"), ("run", CRASHY)])
def test_unreachable_database_exits_5(cli, command):
    done = cli("--database-url", "postgresql://nobody@127.0.0.1:1/nothing", *command, timeout=30)
    assert done.returncode == 5
    assert "cannot connect to PostgreSQL at 127.0.0.1:1/nothing" in error_message(done)
    assert done.stdout == ""


def test_messages_on_stderr_are_never_wrapped(cli, tmp_path):
    # a script or a log file reads one line per message, however long the path or URL in it
    bad = tmp_path / "bad.py"
    bad.write_text("def (:\n")
    syntax = cli("run", str(bad))
    assert len(syntax.stderr.splitlines()) == 1, syntax.stderr
    unreachable = cli("--database-url", "postgresql://nobody@127.0.0.1:1/nothing", "list", timeout=30)
    assert len(unreachable.stderr.splitlines()) == 1, unreachable.stderr
    # the hint after a failed run can be copied as it is
    failed = cli("run", workflow_path("failing"))
    run_id = _events(failed.stdout)[0]["run_id"]
    assert f"statepipe resume {run_id}" in failed.stderr.splitlines()[-1], failed.stderr


# -- the output folder -----------------------------------------------------------------------------


def test_results_file_gets_one_line_per_finished_run(cli, output_dir):
    ok = _run(cli, CRASHY, *FAST)
    failed = _run(cli, workflow_path("failing"), expect=1)
    lines = (output_dir / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["run_id"] for r in records] == [ok, failed]
    assert records[0]["workflow"] == "crashy" and records[0]["state"] == "succeeded"
    assert records[0]["input"] == {"pause": 0, "items": 3}
    assert records[0]["result"] == CRASHY3_OUTPUTS[("final", None)]
    assert records[1]["state"] == "failed" and "boom after 41" in records[1]["error"]
    for r in records:
        assert _ts(r["started_at"]) <= _ts(r["finished_at"]) and r["duration_s"] >= 0


def test_event_file_of_a_run_holds_its_events(cli, output_dir, store):
    done = cli("run", CRASHY, *FAST)
    printed = _events(done.stdout)
    run_id = printed[0]["run_id"]
    in_file = _events((output_dir / f"{run_id}.jsonl").read_text())
    assert [e["seq"] for e in in_file] == list(range(1, store.get_run(run_id).last_seq + 1))
    assert in_file == printed


def test_output_dir_option_moves_the_folder(cli, output_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    done = cli("--output-dir", str(elsewhere), "run", CRASHY, *FAST)
    assert done.returncode == 0, done.stderr
    run_id = _events(done.stdout)[0]["run_id"]
    assert (elsewhere / f"{run_id}.jsonl").is_file()
    assert [json.loads(line)["run_id"] for line in (elsewhere / "results.jsonl").read_text().splitlines()] == [run_id]
    assert not output_dir.exists()  # the default folder (STATEPIPE_OUTPUT_DIR) was not used


def test_a_chosen_result_step_is_the_result_everywhere_the_run_is_shown(cli, store, output_dir):
    run_id = _run(cli, workflow_path("chosen_result"), "-i", "x=2")
    expected = {"total": 42}
    assert cli.json("inspect", run_id, "--json")["run"]["result"] == expected
    assert [r["result"] for r in cli.json("list", "--json") if r["id"] == run_id] == [expected]
    lines = [json.loads(line) for line in (output_dir / "results.jsonl").read_text().splitlines()]
    assert [r["result"] for r in lines if r["run_id"] == run_id] == [expected]
    assert store.results([run_id]) == {run_id: expected}


def test_inspect_lists_the_first_children_of_a_wide_fan_out_and_counts_the_rest(cli):
    keys = [f"k{i:02d}" for i in range(25)]
    run_id = _run(cli, workflow_path("iter_fanout"), "-i", f"keys={json.dumps(keys)}")
    short, full = cli("inspect", run_id), cli("inspect", run_id, "--full")
    assert short.returncode == 0 and full.returncode == 0
    assert "└ k09" in short.stdout and "└ k10" not in short.stdout
    assert "15 more" in short.stdout and "--full shows all" in short.stdout
    assert all(f"└ {k}" in full.stdout for k in keys)


def test_inspect_lists_every_child_that_did_not_succeed_however_many_did():
    from statepipe.store.records import StepRow
    from statepipe.views.render import FANOUT_ROWS, _some_children

    def child(i: int, state: str) -> StepRow:
        return StepRow("fan", f"k{i}", i, False, None, state, [], 1, None, None, None, None)

    children = [child(i, "succeeded") for i in range(30)] + [child(30 + i, "failed") for i in range(3)]
    shown = _some_children(children)
    assert [c.item for c in shown] == [f"k{i}" for i in range(FANOUT_ROWS - 3)] + ["k30", "k31", "k32"]


def test_inspect_shows_the_head_of_a_big_list_output_and_its_length(cli, store):
    from statepipe.store.records import ListPreview

    run_id = _run(cli, workflow_path("rows"))
    rows = next(s for s in store.snapshot(run_id, preview=True).steps if s.name == "rows")
    assert rows.output == ListPreview([{"key": f"key-{i:05d}", "n": i + 1} for i in range(20)], 3000)
    assert next(s for s in store.snapshot(run_id).steps if s.name == "rows").output[2999] == {"key": "key-02999", "n": 3000}
    short, full = cli("inspect", run_id), cli("inspect", run_id, "--full")
    assert "(a list of 3,000 items; --full shows all)" in short.stdout and "[3000 items]" in short.stdout
    assert '"key-02999"' in full.stdout and "--full shows all" not in full.stdout


def test_inspect_lists_a_fan_out_one_child_past_the_limit_whole():
    from statepipe.store.records import StepRow
    from statepipe.views.render import FANOUT_ROWS, _some_children

    children = [StepRow("fan", f"k{i}", i, False, None, "succeeded", [], 1, None, None, None, None) for i in range(FANOUT_ROWS + 1)]
    assert _some_children(children) == children
