"""How `inspect`, `list` and the live display fit a terminal: the renderables the CLI prints,
recorded by rich at 60, 80 and 120 columns, for runs made in this process. At 60 columns the
id, step names, states, times and attempts stay whole and output text gives way; inspect fits
about one screen, shows the result once and cuts values by their structure."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from conftest import REPO, all_events, run_here, step_of
from rich.console import Console

from statepipe.lifecycles import RUN_STATES, STEP_STATES
from statepipe.views.live import LiveView
from statepipe.views.render import TRACEBACK_LINES, inspect_view, list_table
from statepipe.views.style import STATE_STYLE, format_duration

BUILDING = str(REPO / "workflows" / "building.py")
WIDTHS = (60, 80, 120)


def render(renderable: Any, width: int) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return [line.rstrip() for line in console.export_text().splitlines()]


def inspected(store: Any, run_id: str, width: int, full: bool = False) -> list[str]:
    return render(inspect_view(store.snapshot(run_id, preview=not full), [], full), width)


def live_frame(store: Any, run_id: str, width: int, events: int | None = None) -> list[str]:
    """The live display after the run's first `events` events (all of them by default)."""
    view = LiveView(Console(), run_id, store.get_run(run_id).workflow)
    view.update(all_events(store, run_id)[:events])
    return render(view, width)


def row_of(lines: list[str], label: str) -> str:
    """The one table line of a step (or a run, by its short id): its label, then its state."""
    states = "|".join(STATE_STYLE)
    [row] = [line for line in lines if re.match(rf"\s*{re.escape(label)}( \d+/\d+)?\s+(. )?({states})(\s|$)", line)]
    return row


def header(lines: list[str]) -> list[str]:
    """The column names of the table."""
    return next(line for line in lines if line.startswith(("step ", "id "))).split()


def without_text(line: str) -> str:
    """The line without its JSON strings (whole or cut), which may end at any word."""
    return re.sub(r'"(?:[^"\\]|\\.)*(?:"|$)', '""', line)


@pytest.fixture
def building(store: Any) -> str:
    return run_here(store, BUILDING, step_seconds=0)


@pytest.fixture
def runs(store: Any, building: str) -> dict[str, str]:
    return {
        "building": building,
        "crashy": run_here(store, "crashy", pause=0, items=3),
        "failing": run_here(store, "failing"),
    }


# -- every view fits its width -------------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
def test_inspect_lines_fit_the_width(store, runs, width):
    for run_id in runs.values():
        for full in (False, True):
            assert max(map(len, inspected(store, run_id, width, full))) <= width


@pytest.mark.parametrize("width", WIDTHS)
def test_list_lines_fit_the_width(store, runs, width):
    assert max(map(len, render(list_table(store.list_runs()), width))) <= width


@pytest.mark.parametrize("width", WIDTHS)
def test_live_display_lines_fit_the_width(store, building, width):
    assert max(map(len, live_frame(store, building, width))) <= width


# -- at 60 columns, what identifies a run and a step stays whole ---------------------------------


def test_list_at_60_columns_keeps_the_8_character_id_the_state_and_the_time(store, runs):
    lines = render(list_table(store.list_runs()), 60)
    for run_id in runs.values():
        run = store.get_run(run_id)
        [row] = [line for line in lines if line.startswith(f"{run_id[:8]}  ")]
        assert re.search(rf"\b{run.state}\b", row), row
        assert format_duration(run.executing_s) in row, row
        assert f"{run.steps_done}/{run.steps_total}" in row


def test_inspect_at_60_columns_keeps_each_steps_name_state_attempts_and_time(store, building):
    lines = inspected(store, building, 60)
    for s in store.snapshot(building).parents():
        duration = format_duration((s.finished_at - s.started_at).total_seconds())
        assert re.match(rf"{s.name}\s+{s.state}\s+{len(s.attempts)}\s+{re.escape(duration)}(\s|$)", row_of(lines, s.name))


def test_inspect_gives_up_the_start_time_and_output_text_before_other_columns(store, building):
    assert header(inspected(store, building, 120)) == ["step", "state", "att", "time", "started", "output"]
    assert header(inspected(store, building, 60)) == ["step", "state", "att", "time", "output"]

    def output(width: int) -> str:
        return row_of(inspected(store, building, width), "site_analysis").split("  ")[-1]

    assert len(output(60)) < len(output(120))


def test_live_display_at_60_columns_keeps_each_steps_name_state_time_and_attempt(store, building):
    lines = live_frame(store, building, 60)
    assert header(lines) == ["step", "state", "time", "att", "output"]
    for s in store.snapshot(building).parents():
        assert re.match(rf"{s.name}( \d+/\d+)?\s+succeeded\s+\d+\.\d\ds\s+1(\s|$)", row_of(lines, s.name))


def test_live_display_at_60_columns_keeps_running_childrens_state_and_attempt(store, building):
    events = all_events(store, building)
    fifth_start = [i for i, e in enumerate(events) if e.type == "step_started" and e.item][4]
    lines = live_frame(store, building, 60, events=fifth_start + 1)
    children = [line for line in lines if "└" in line]
    assert len(children) == 5
    assert all(re.search(r"└ \w+\s+. running\s+\d+\.\d\ds\s+1(\s|$)", line) for line in children), children


def test_live_display_shortens_the_run_id_to_8_characters_only_when_narrow(store, building):
    assert live_frame(store, building, 120)[0].startswith(f"run {building}  building")
    assert live_frame(store, building, 60)[0].startswith(f"run {building[:8]}  building")


def whole_words(words: set[str], lines: list[str]) -> bool:
    text = "\n".join(lines)
    return all(re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text) for word in words)


@pytest.mark.parametrize("width", (60, 80))
def test_no_step_name_state_or_error_word_is_broken_across_lines(store, runs, width):
    for run_id in runs.values():
        snap = store.snapshot(run_id)
        words = {s.name for s in snap.steps} | {s.state for s in snap.steps}
        errors = {w for s in snap.steps for w in re.findall(r"\w+", s.error or "")}
        assert whole_words(words | errors, inspected(store, run_id, width))
        assert whole_words(words, live_frame(store, run_id, width))  # its output column is given up


# -- inspect: one screen, the result once, structural cuts ---------------------------------------


def test_inspect_of_a_five_step_run_fits_in_80_lines_at_80_columns(store, building):
    assert len(store.snapshot(building).parents()) == 5
    assert len(inspected(store, building, 80)) < 80


@pytest.mark.parametrize("full", (False, True))
def test_inspect_shows_the_result_once(store, building, full):
    lines = inspected(store, building, 80, full)
    # columns_per_level is a key of the result (the last step's output) and of nothing else
    assert sum("columns_per_level" in line for line in lines) == 1
    assert "the result, above" in row_of(lines, "structural_grid")


def test_inspect_cuts_a_long_list_to_its_first_items_and_its_length(store, building):
    lines = inspected(store, building, 80)
    names = [d["code"] for d in step_of(store.snapshot(building), "departments").output]
    assert len(names) == 11
    assert re.search(r'\[11 items: \{code: "LOB"', row_of(lines, "departments"))
    block = lines[lines.index("departments  [11 items]"):]
    assert block[1].strip().startswith('- {code: "LOB"')
    assert "… (a list of 11 items; --full shows all)" in "\n".join(block[:8])
    assert not any(f'code: "{names[-1]}"' in line for line in block[:8])


@pytest.mark.parametrize("width", WIDTHS)
def test_inspect_never_cuts_a_number(store, building, width):
    for line in map(without_text, inspected(store, building, width)):
        assert not re.search(r"\d…|\d\.(?!\d)", line), line


@pytest.mark.parametrize("width", WIDTHS)
def test_inspect_keeps_keys_whole_when_it_cuts_a_value(store, building, width):
    def keys(value: Any) -> set[str]:
        if isinstance(value, dict):
            return set(value) | {k for v in value.values() for k in keys(v)}
        return {k for v in value for k in keys(v)} if isinstance(value, list) else set()

    snap = store.snapshot(building)
    known = {k for s in snap.steps for k in keys(s.output)} | keys(snap.run.input)
    text = "\n".join(map(without_text, inspected(store, building, width)))
    shown = set(re.findall(r"([A-Za-z_][\w-]*): ", re.sub(r"\[\d+ items?: ", "[", text)))
    assert "…" in text and len(shown) > 20
    assert shown <= known, shown - known


def test_inspect_full_shows_every_value_whole(store, building):
    text = "\n".join(inspected(store, building, 80, full=True))
    snap = store.snapshot(building)
    assert "--full shows all" not in text
    for dept in step_of(snap, "departments").output:
        assert f'"name": "{dept["name"]}"' in text
    for room in step_of(snap, "spaces", "ADM").output["rooms"]:  # the last child's rooms
        assert f'"name": "{room["name"]}"' in text


# -- failures and feedback ------------------------------------------------------------------------


def test_inspect_shows_a_failed_steps_error_and_the_start_of_its_traceback_dimmed(store):
    run_id = run_here(store, "failing")
    snap = store.snapshot(run_id, preview=True)
    [attempt] = step_of(snap, "explode").attempts
    frames = [f'  File "workflows/failing.py", line {n}, in frame_{n}' for n in range(30)]
    attempt.traceback = "\n".join(["Traceback (most recent call last):", *frames, attempt.error])
    console = Console(width=80, record=True, file=io.StringIO(), color_system="truecolor")
    console.print(inspect_view(snap, [], False))
    lines = console.export_text(clear=False).splitlines()
    shown = [line.strip() for line in lines if "frame_" in line]

    assert any(re.search(r"#1 failed .*RuntimeError: boom after 41", line) for line in lines)
    assert shown == [f.strip() for f in frames[: TRACEBACK_LINES - 2]]
    hidden = len(frames) + 2 - (TRACEBACK_LINES - 1)  # with the first line and the error's
    assert any(f"({hidden} more lines; --full shows all)" in line for line in lines)
    assert "\x1b[2m" in console.export_text(styles=True).split("frame_0")[0].rsplit("\n", 1)[-1]  # dim


def test_inspect_full_shows_the_whole_traceback(store):
    run_id = run_here(store, "failing")
    snap = store.snapshot(run_id)
    [attempt] = step_of(snap, "explode").attempts
    frames = [f'  File "workflows/failing.py", line {n}, in frame_{n}' for n in range(30)]
    attempt.traceback = "\n".join(["Traceback (most recent call last):", *frames, attempt.error])
    text = "\n".join(render(inspect_view(snap, [], True), 80))
    assert all(f"frame_{n}" in text for n in range(30))


def test_inspect_shows_the_feedback_a_step_received(store, cli):
    run_id = run_here(store, "iter_diamond")
    done = cli("rerun", run_id, "--from", "right", "--feedback", "write a longer label")
    assert done.returncode == 0, done.stderr
    lines = inspected(store, run_id, 80)
    start = max(i for i, line in enumerate(lines) if re.match(r"right(\s|$)", line))  # the block after the table
    block = lines[start + 1:start + 4]
    assert any(re.match(r"\s+feedback\s+write a longer label$", line) for line in block), block


def test_every_state_has_a_colour():
    assert set(RUN_STATES) | set(STEP_STATES) | {"interrupted"} <= set(STATE_STYLE)
    assert STATE_STYLE["interrupted"] != STATE_STYLE["running"]
