"""Defining a workflow: what a valid DAG looks like, and the clear error each mistake gets.

A workflow is validated when it is loaded (before any run exists): cycles, unknown or duplicate
step names, reserved names and signatures statepipe cannot call are refused with a message that
names the problem; a run whose input lacks what a step needs is refused before it is created.
"""

from __future__ import annotations

import re
import textwrap

import pytest
from conftest import error_message, workflow_path

from statepipe import Workflow
from statepipe.errors import DefinitionError, InputError

# -- what a valid definition gives ---------------------------------------------------------------


def test_dependencies_come_from_parameter_names_and_after():
    wf = Workflow("deps")

    @wf.step
    def fetch(url: str) -> str:
        return url

    @wf.step
    def clean(fetch) -> str:
        return fetch

    @wf.step(after=[fetch])
    def notify() -> None:
        return None

    @wf.step(after=["notify"])
    def publish(clean, input) -> str:
        return clean

    assert [s.name for s in wf.steps] == ["fetch", "clean", "notify", "publish"]
    assert wf["clean"].depends_on == ("fetch",)
    assert wf["notify"].depends_on == ("fetch",)
    assert wf["publish"].depends_on == ("notify", "clean")
    # `url` is read from the run input; `input` is the whole input, not a dependency
    assert [p.name for p in wf["fetch"].input_params] == ["url"]
    assert wf["publish"].input_params == ()


def test_steps_are_listed_dependencies_first_whatever_the_declaration_order():
    wf = Workflow("order")

    @wf.step(after=["first"])
    def second() -> int:
        return 2

    @wf.step
    def first() -> int:
        return 1

    assert [s.name for s in wf.steps] == ["first", "second"]


def test_a_step_stays_a_plain_callable():
    wf = Workflow("callable")

    @wf.step
    def double(x: int) -> int:
        return 2 * x

    assert double(x=21) == 42


def test_sync_and_async_step_functions_are_both_accepted():
    wf = Workflow("both")

    @wf.step
    def sync_step() -> int:
        return 1

    @wf.step
    async def async_step(sync_step) -> int:
        return sync_step

    assert not wf["sync_step"].is_async
    assert wf["async_step"].is_async


# -- cycles and unknown steps --------------------------------------------------------------------


def test_cycle_through_parameters_is_refused_and_named():
    wf = Workflow("loop")

    @wf.step
    def a(c) -> int:
        return c

    @wf.step
    def b(a) -> int:
        return a

    @wf.step
    def c(b) -> int:
        return b

    with pytest.raises(DefinitionError) as info:
        wf.validate()
    message = str(info.value)
    assert "workflow loop" in message and "cycle" in message
    cycle = re.search(r"cycle (.*)$", message).group(1).split(" -> ")
    # the cycle is spelled out as a closed path through exactly the three steps
    assert cycle[0] == cycle[-1] and sorted(cycle[:-1]) == ["a", "b", "c"]


def test_cycle_through_after_is_refused():
    wf = Workflow("loop2")

    @wf.step(after=["pong"])
    def ping() -> None:
        return None

    @wf.step(after=["ping"])
    def pong() -> None:
        return None

    with pytest.raises(DefinitionError, match=r"dependency cycle (ping -> pong -> ping|pong -> ping -> pong)"):
        wf.validate()


def test_step_depending_on_itself_is_refused():
    wf = Workflow("selfish")

    @wf.step(after=["me"])
    def me() -> None:
        return None

    with pytest.raises(DefinitionError, match="step me: depends on itself"):
        wf.validate()


def test_parameter_named_after_its_own_step_is_refused():
    wf = Workflow("selfish2")

    @wf.step
    def total(total: int = 0) -> int:
        return total

    with pytest.raises(DefinitionError, match="step total: a parameter cannot name its own step"):
        wf.validate()


def test_unknown_dependency_is_refused_and_named():
    wf = Workflow("typo")

    @wf.step
    def fetch() -> int:
        return 1

    @wf.step(after=["fecth"])
    def parse() -> int:
        return 2

    with pytest.raises(DefinitionError, match=r"workflow typo, step parse: depends on unknown step 'fecth'"):
        wf.validate()


def test_unknown_map_over_source_is_refused():
    wf = Workflow("typo2")

    @wf.step(map_over="nowhere")
    def each(item) -> int:
        return item

    with pytest.raises(DefinitionError, match="depends on unknown step 'nowhere'"):
        wf.validate()


def test_unknown_result_step_is_refused():
    wf = Workflow("res", result="missing")

    @wf.step
    def only() -> int:
        return 1

    with pytest.raises(DefinitionError, match="result step 'missing' is unknown"):
        wf.validate()


def test_workflow_without_steps_is_refused():
    with pytest.raises(DefinitionError, match="workflow empty: it has no steps"):
        Workflow("empty").validate()


def test_dependency_that_is_neither_step_nor_name_is_refused():
    wf = Workflow("bad_after")
    with pytest.raises(DefinitionError, match="dependencies must be steps or step names, got 42"):

        @wf.step(after=[42])
        def x() -> None:
            return None


# -- names -----------------------------------------------------------------------------------


def test_duplicate_step_name_is_refused():
    wf = Workflow("dupes")

    @wf.step
    def fetch() -> int:
        return 1

    with pytest.raises(DefinitionError, match="workflow dupes, step fetch: duplicate step name"):

        @wf.step(name="fetch")
        def fetch_again() -> int:
            return 2


@pytest.mark.parametrize("reserved", ["ctx", "item", "input"])
def test_reserved_names_cannot_name_a_step(reserved):
    wf = Workflow("reserved")
    with pytest.raises(DefinitionError, match=f"'{reserved}' is reserved; rename the step"):

        @wf.step(name=reserved)
        def anything() -> None:
            return None


@pytest.mark.parametrize("name", ["", "has space", "semi;colon", "dot.ted"])
def test_workflow_names_are_letters_digits_underscore_dash(name):
    with pytest.raises(DefinitionError, match="use letters, digits"):
        Workflow(name)


# -- signatures ------------------------------------------------------------------------------


def test_star_args_are_refused():
    wf = Workflow("sig")
    with pytest.raises(DefinitionError, match=r"step loose: \*args/\*\*kwargs are not supported"):

        @wf.step
        def loose(*args) -> None:
            return None


def test_star_star_kwargs_are_refused():
    wf = Workflow("sig2")
    with pytest.raises(DefinitionError, match=r"step loose: \*args/\*\*kwargs are not supported"):

        @wf.step
        def loose(ctx, **kwargs) -> None:
            return None


def test_positional_only_parameters_are_refused():
    wf = Workflow("sig3")
    with pytest.raises(DefinitionError, match="positional-only parameter 'x'"):

        @wf.step
        def pos(x, /) -> None:
            return None


def test_map_over_step_without_item_parameter_is_refused():
    wf = Workflow("fan")

    @wf.step
    def items() -> list:
        return [1, 2]

    with pytest.raises(DefinitionError, match="step each: a map_over step needs an 'item' parameter"):

        @wf.step(map_over=items)
        def each(items) -> int:
            return 0


def test_item_parameter_without_map_over_is_refused():
    wf = Workflow("fan2")
    with pytest.raises(DefinitionError, match="step lonely: 'item' is only given to map_over steps"):

        @wf.step
        def lonely(item) -> int:
            return item


def test_concurrency_is_only_for_map_over_steps():
    wf = Workflow("fan3")
    with pytest.raises(DefinitionError, match="concurrency applies to map_over steps only"):

        @wf.step(concurrency=2)
        def single() -> None:
            return None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retries": -1}, "retries must be >= 0"),
        ({"timeout": 0}, "timeout must be positive"),
        ({"retries": 2, "retry": object()}, "give retries= or retry=, not both"),
    ],
    ids=["negative-retries", "zero-timeout", "retries-and-retry"],
)
def test_invalid_step_options_are_refused(options, message):
    wf = Workflow("opts")
    with pytest.raises(DefinitionError, match=message):

        @wf.step(**options)
        def s() -> None:
            return None


# -- input -----------------------------------------------------------------------------------


def _needs_topic() -> Workflow:
    wf = Workflow("needs")

    @wf.step
    def research(topic: str, depth: int = 2) -> str:
        return topic * depth

    @wf.step
    def write(research, input, audience: str = "all") -> str:
        return research

    return wf


def test_missing_required_input_is_refused_naming_input_and_step():
    with pytest.raises(InputError) as info:
        _needs_topic().check_input({"depth": 3})
    assert str(info.value) == (
        "workflow needs needs input 'topic' (used by step research); pass -i topic=..."
    )


def test_inputs_with_defaults_are_optional():
    _needs_topic().check_input({"topic": "x"})  # depth and audience have defaults: no error


def test_cli_refuses_a_run_missing_input_before_creating_it(cli, store):
    done = cli("run", workflow_path("echo_needs"), "-i", "other=1")
    assert done.returncode == 2
    message = error_message(done)
    assert "needs input 'topic'" in message and "pass -i topic=" in message
    assert done.stdout == ""
    assert store.list_runs() == []


# -- loading workflows through the CLI -------------------------------------------------------


def test_unknown_workflow_name_exits_3(cli, store):
    done = cli("run", "no_such_workflow")
    assert done.returncode == 3
    assert "unknown workflow 'no_such_workflow'" in error_message(done)
    assert store.list_runs() == []


def test_missing_workflow_file_exits_3(cli, tmp_path):
    done = cli("graph", str(tmp_path / "absent.py"))
    assert done.returncode == 3
    assert "does not exist" in error_message(done)


def test_workflow_file_with_syntax_error_exits_2_without_traceback(cli, store, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from statepipe import Workflow\nwf = Workflow('bad')\ndef oops(:\n    pass\n")
    done = cli("run", str(bad))
    assert done.returncode == 2
    message = error_message(done)  # also asserts: no traceback
    assert "bad.py:3: syntax error" in message
    assert store.list_runs() == []


def test_workflow_file_that_raises_on_import_exits_2(cli, tmp_path):
    bad = tmp_path / "raises.py"
    bad.write_text("import no_such_module_anywhere\n")
    done = cli("graph", str(bad))
    assert done.returncode == 2
    assert "failed to import: ModuleNotFoundError" in error_message(done)


def test_workflow_file_with_a_cycle_exits_2_naming_it(cli, store, tmp_path):
    path = tmp_path / "cyc.py"
    path.write_text(
        textwrap.dedent(
            """
            from statepipe import Workflow
            wf = Workflow("cyc")

            @wf.step
            def a(b): return b

            @wf.step
            def b(a): return a
            """
        )
    )
    done = cli("run", str(path))
    assert done.returncode == 2
    assert re.search(r"dependency cycle (a -> b -> a|b -> a -> b)", error_message(done))
    assert store.list_runs() == []


def test_verbose_shows_the_traceback_of_a_user_error(cli, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def (:\n")
    done = cli("--verbose", "graph", str(bad))
    assert done.returncode == 2
    assert "Traceback" in done.stderr and "DefinitionError" in done.stderr
