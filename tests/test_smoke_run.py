import json

from conftest import workflow_path


def test_piped_run_prints_events_and_succeeds(cli):
    done = cli("run", workflow_path("crashy"), "-i", "pause=0", "-i", "items=3")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[0]["type"] == "run_created"
    assert events[-1]["type"] == "run_succeeded"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
