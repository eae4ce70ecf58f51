"""The command's basics and small traps (issue 23, items 8 and 10), through the real CLI:
--version, shell completion, two-line usage errors, global options after the command, unknown
input keys, the hint after a failure, `workflows` and `list` when there is nothing (or more) to
show, a malformed database URL, and the output folder a run keeps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI, cli_env, error_message, workflow_path

ECHO = workflow_path("echo")
NEEDS = workflow_path("echo_needs")  # research(topic, depth=1)


def _run_id(done: subprocess.CompletedProcess[str]) -> str:
    return str(json.loads(done.stdout.splitlines()[0])["run_id"])


def _elsewhere(cli: CLI, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command run from another folder, with no STATEPIPE_OUTPUT_DIR: where a user's shell is."""
    env = cli_env()
    env.pop("STATEPIPE_OUTPUT_DIR", None)
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(cli.argv(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


def _seqs(path: Path) -> list[int]:
    return [json.loads(line)["seq"] for line in path.read_text().splitlines()]


# -- 8. CLI basics ---------------------------------------------------------------------------------


def test_version_prints_the_installed_version(cli):
    done = cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"statepipe {version('statepipe')}\n"


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        (("lst",), "no such command 'lst'.", "see: statepipe --help"),
        (("list", "--bogus"), "no such option '--bogus'", "see: statepipe list --help"),
        (("inspect",), "missing argument 'RUN_ID'.", "see: statepipe inspect --help"),
        (("list", "--limit", "x"), "invalid value for '--limit'", "see: statepipe list --help"),
        (("db", "sttus"), "no such command 'sttus'.", "see: statepipe db --help"),
    ],
    ids=["unknown-command", "unknown-option", "missing-argument", "bad-value", "unknown-subcommand"],
)
def test_a_usage_error_is_the_error_and_a_hint_on_two_lines_exit_2(cli, args, message, hint):
    done = cli(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr
    assert message in error_message(done)
    assert lines[1] == hint


def test_a_mistyped_command_is_suggested_once(cli):
    done = cli("lst")
    assert done.stderr.count("Did you mean") == 1, done.stderr
    assert "Did you mean 'list'?" in error_message(done)


def test_verbose_after_the_command_shows_the_traceback(cli):
    done = cli("inspect", "0000dead", "-v")
    assert done.returncode == 3
    assert "Traceback" in done.stderr
    assert "statepipe: error: no run '0000dead'" in done.stderr


def test_database_url_after_the_command_is_the_one_used(cli):
    done = cli("list", "--database-url", "not a url")
    assert done.returncode == 2
    assert error_message(done).startswith("invalid database URL")


def test_output_dir_after_the_command_moves_the_event_file(cli, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    done = cli("run", ECHO, "-i", "a=1", "--output-dir", str(elsewhere))
    assert done.returncode == 0, done.stderr
    assert (elsewhere / f"{_run_id(done)}.jsonl").exists()


def test_completion_prints_a_bash_script_that_completes_commands_and_options(cli, tmp_path):
    bin_dir = Path(sys.executable).parent
    if shutil.which("bash") is None or not (bin_dir / "statepipe").exists():
        pytest.skip("needs bash, and the statepipe command installed next to this Python")
    script = cli("completion", "bash")
    assert script.returncode == 0, script.stderr
    (tmp_path / "statepipe.sh").write_text(script.stdout)
    probe = (
        f"source {tmp_path / 'statepipe.sh'}\n"
        'COMP_WORDS=(statepipe li); COMP_CWORD=1; COMPREPLY=(); _statepipe_completion statepipe; echo "${COMPREPLY[*]}"\n'
        'COMP_WORDS=(statepipe list --sta); COMP_CWORD=2; COMPREPLY=(); _statepipe_completion statepipe; echo "${COMPREPLY[*]}"\n'
    )
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    done = subprocess.run(["bash", "-c", probe], env=cli_env(PATH=path), capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.splitlines() == ["list", "--status"], done.stderr


@pytest.mark.parametrize(("shell", "marker"), [("zsh", "#compdef statepipe"), ("fish", "complete --no-files --command statepipe")])
def test_completion_prints_the_script_for_zsh_and_fish(cli, shell, marker):
    done = cli("completion", shell)
    assert done.returncode == 0, done.stderr
    assert marker in done.stdout
    assert "_STATEPIPE_COMPLETE" in done.stdout


def test_completion_of_an_unknown_shell_is_refused_naming_the_ones_there_are(cli):
    done = cli("completion", "tcsh")
    assert done.returncode == 2
    assert "bash|zsh|fish" in error_message(done)


def test_completion_install_writes_the_script_and_adds_one_line_to_bashrc(cli, tmp_path):
    for _ in range(2):
        done = cli("completion", "bash", "--install", HOME=str(tmp_path))
        assert done.returncode == 0, done.stderr
    assert "_STATEPIPE_COMPLETE" in (tmp_path / ".bash_completions" / "statepipe.sh").read_text()
    bashrc = (tmp_path / ".bashrc").read_text()
    assert bashrc.count("source ~/.bash_completions/statepipe.sh") == 1


def test_completion_install_for_fish_writes_into_its_completions_folder(cli, tmp_path):
    done = cli("completion", "fish", "--install", HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"))
    assert done.returncode == 0, done.stderr
    assert "_STATEPIPE_COMPLETE" in (tmp_path / "config" / "fish" / "completions" / "statepipe.fish").read_text()


# -- 10. traps: input keys ----------------------------------------------------------------------------


def test_an_unknown_input_key_is_refused_listing_the_inputs(cli, store):
    done = cli("run", NEEDS, "-i", "topic=x", "-i", "dept=2")
    assert done.returncode == 2
    assert error_message(done) == "workflow echo_needs has no input 'dept' (did you mean 'depth'?); its inputs: depth, topic"
    assert store.list_runs() == []


def test_a_workflow_declaring_extra_inputs_accepts_any_key(cli, tmp_path):
    path = tmp_path / "open.py"
    path.write_text(
        "from statepipe import Workflow\n"
        "wf = Workflow('open', extra_inputs=True)\n"
        "@wf.step\n"
        "def greet(ctx, name: str) -> str:\n"
        "    return ctx.input.get('greeting', 'hello') + ' ' + name\n"
    )
    done = cli("run", str(path), "-i", "name=ann", "-i", "greeting=hi")
    assert done.returncode == 0, done.stderr
    assert json.loads(cli("inspect", _run_id(done), "--json").stdout)["run"]["result"] == "hi ann"


def test_a_batch_line_with_an_unknown_key_is_refused_naming_the_line(cli, store, tmp_path):
    path = tmp_path / "inputs.jsonl"
    path.write_text('{"topic": "a"}\n{"topic": "b", "dept": 2}\n')
    done = cli("batch", NEEDS, str(path))
    assert done.returncode == 2
    assert error_message(done).startswith("input 2: workflow echo_needs has no input 'dept'")
    assert store.list_runs() == []


def test_rerun_set_refuses_an_unknown_key(cli, store):
    run_id = _run_id(cli("run", NEEDS, "-i", "topic=x"))
    done = cli("rerun", run_id, "--set", "dept=2")
    assert done.returncode == 2
    assert "has no input 'dept'" in error_message(done)
    assert store.get_run(run_id).input == {"topic": "x"}


# -- 10. traps: the hint after a failure -------------------------------------------------------------


def test_a_run_failed_by_its_input_hints_rerun_set_which_then_succeeds(cli, tmp_path):
    path = tmp_path / "picky.py"
    path.write_text(
        "from statepipe import InputError, Workflow\n"
        "class BadHeight(InputError):\n    pass\n"
        "wf = Workflow('picky')\n"
        "@wf.step\n"
        "def check(height_m: float) -> float:\n"
        "    if height_m <= 0:\n"
        "        raise BadHeight(f'height_m must be positive, got {height_m}')\n"
        "    return height_m\n"
    )
    failed = cli("run", str(path), "-i", "height_m=-1")
    assert failed.returncode == 1
    run_id = _run_id(failed)
    assert f"statepipe rerun {run_id} --set height_m=" in failed.stderr
    assert "statepipe resume" not in failed.stderr
    fixed = cli("rerun", run_id, "--set", "height_m=2")
    assert fixed.returncode == 0, fixed.stderr


def test_a_step_that_keeps_killing_its_process_hints_rerun_from(cli, tmp_path):
    path = tmp_path / "dies.py"
    path.write_text(
        "import os\n"
        "from statepipe import Workflow\n"
        "wf = Workflow('dies', max_abandoned=1)\n"
        "@wf.step\n"
        "def boom() -> str:\n"
        "    os._exit(9)\n"
    )
    run_id = _run_id(cli("run", str(path)))
    failed = cli("resume", run_id)
    assert failed.returncode == 1
    assert f"statepipe rerun {run_id} --from boom" in failed.stderr
    assert "statepipe resume" not in failed.stderr


def test_any_other_failure_still_hints_resume(cli):
    failed = cli("run", workflow_path("failing"))
    assert failed.returncode == 1
    assert f"statepipe resume {_run_id(failed)}" in failed.stderr


# -- 10. traps: nothing to show, more to show -------------------------------------------------------


def test_workflows_with_none_found_says_where_it_looked_and_exits_0(cli, tmp_path):
    done = _elsewhere(cli, tmp_path / "empty", "workflows")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines()[0] == "no workflows found in ./workflows (no such folder), STATEPIPE_WORKFLOWS_PATH (not set)"
    assert "STATEPIPE_WORKFLOWS_PATH" in done.stderr.splitlines()[1]


def _enqueue(store: Any, count: int) -> None:
    from statepipe.definition.loader import load
    from statepipe.engine.runtime import Runtime

    runtime = Runtime(store)
    try:
        runtime.create_runs(load(ECHO), [{"n": i} for i in range(count)], detach=True)
    finally:
        runtime._closing.set()
        runtime.writer.close()


def test_list_says_how_many_runs_its_limit_left_out(cli, store):
    _enqueue(store, 3)
    done = cli("list", "--limit", "2")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "2 of 3 runs; --limit 3 shows them all\n"
    assert sum(1 for line in done.stdout.splitlines() if "echo" in line) == 2


def test_list_json_keeps_stdout_a_json_array_when_runs_are_left_out(cli, store):
    _enqueue(store, 3)
    done = cli("list", "--limit", "1", "--json")
    assert len(json.loads(done.stdout)) == 1
    assert done.stderr == "1 of 3 runs; --limit 3 shows them all\n"


@pytest.mark.parametrize(
    ("args", "said"),
    [((), "no runs yet"), (("--status", "failed", "--workflow", "echo"), "no runs match --status failed --workflow echo")],
    ids=["none-at-all", "none-matching"],
)
def test_list_with_no_runs_says_so_instead_of_an_empty_table(cli, args, said):
    done = cli("list", *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == said + "\n"


def test_a_malformed_database_url_is_bad_input_exit_2(cli):
    done = cli("list", STATEPIPE_DATABASE_URL="postgresql://[::1")
    assert done.returncode == 2
    assert error_message(done).startswith("invalid database URL")


# -- 10. traps: the output folder a run keeps -------------------------------------------------------


def test_a_rerun_from_another_folder_writes_to_the_runs_own_output_folder(cli, tmp_path):
    first = _elsewhere(cli, tmp_path / "a", "run", ECHO, "-i", "x=1")
    assert first.returncode == 0, first.stderr
    run_id = _run_id(first)
    again = _elsewhere(cli, tmp_path / "b", "rerun", run_id, "--set", "x=2")
    assert again.returncode == 0, again.stderr
    assert not (tmp_path / "b" / "output").exists()
    seqs = _seqs(tmp_path / "a" / "output" / f"{run_id}.jsonl")
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > len(first.stdout.splitlines())


def test_output_dir_still_moves_a_rerun_of_a_run_started_elsewhere(cli, tmp_path):
    run_id = _run_id(_elsewhere(cli, tmp_path / "a", "run", ECHO, "-i", "x=1"))
    moved = tmp_path / "moved"
    again = _elsewhere(cli, tmp_path / "b", "--output-dir", str(moved), "rerun", run_id, "--set", "x=2")
    assert again.returncode == 0, again.stderr
    assert (moved / f"{run_id}.jsonl").exists()
