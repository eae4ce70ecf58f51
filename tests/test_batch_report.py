"""`batch` says which inputs did not succeed (issue 23, item 6): a table of the failures (input
line, run id, error) and a one-line summary; `list --batch ID` shows a batch's runs."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import workflow_path

FAULTY = workflow_path("faulty")


def _batch(cli, tmp_path: Path) -> tuple[str, str]:
    inputs = [{"items": 2, "pause": 0.02}, {"items": 2, "pause": 0.02, "fail_at": "seed"}, {"items": 3, "pause": 0.02}]
    path = tmp_path / "inputs.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in inputs))
    done = cli("batch", FAULTY, str(path), "--concurrency", "2", COLUMNS="120")
    assert done.returncode == 1, done.stderr
    batch_id = done.stderr.split()[1].rstrip(":")
    return batch_id, done.stderr


def test_batch_ends_with_the_failed_inputs_their_runs_and_errors_and_a_summary_line(cli, tmp_path):
    batch_id, stderr = _batch(cli, tmp_path)
    failed = cli.json("list", "--json", "--batch", batch_id, "--status", "failed")
    assert len(failed) == 1
    row = next(line for line in stderr.splitlines() if failed[0]["id"][:8] in line)
    assert "#2" in row and "failed" in row and "NonRetryable: seed was asked to fail" in row
    assert stderr.strip().splitlines()[-1] == (
        f"batch {batch_id}: 2 of 3 succeeded, 1 failed in "
        + stderr.strip().splitlines()[-1].split(" in ")[1]
    )
    assert stderr.strip().splitlines()[-1].endswith(f"; see: statepipe list --batch {batch_id}")


def test_list_batch_shows_only_that_batchs_runs(cli, tmp_path):
    batch_id, _ = _batch(cli, tmp_path)
    other = cli("run", FAULTY, "-i", "items=1", "-i", "pause=0.01")
    assert other.returncode == 0, other.stderr
    runs = cli.json("list", "--json", "--batch", batch_id)
    assert len(runs) == 3 and {r["batch_id"] for r in runs} == {batch_id}
    assert len(cli.json("list", "--json")) == 4
