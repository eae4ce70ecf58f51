"""Workflow and step definitions.

A step's parameters say what it receives: `ctx` gets the StepContext, `item` the element of a
fan-out, a parameter named after another step gets that step's output (and makes it a
dependency), `input` gets the whole run input, and any other name is read from the run input.
"""

from __future__ import annotations

import difflib
import graphlib
import hashlib
import inspect
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from statepipe.definition.policy import RetryPolicy
from statepipe.errors import DefinitionError, InputError

RESERVED_PARAMS = ("ctx", "item", "input")
HOOKS = ("on_init", "on_progress", "on_retry", "on_error", "on_success", "on_complete")
STEP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Param:
    name: str
    has_default: bool
    default: Any = None


@dataclass(eq=False)
class Step:
    """One named node of the DAG. Calling it calls the wrapped function, so steps stay testable."""

    name: str
    fn: Callable[..., Any]
    after: tuple[str, ...] = ()
    map_over: str | None = None
    when: Callable[..., bool] | None = None
    retry: RetryPolicy | None = None
    timeout: float | None = None
    concurrency: int | None = None
    item_key: Callable[[Any], str] | None = None
    description: str = ""
    optional: bool = False
    on_exhausted: str = "fail"
    max_abandoned: int | None = None  # None: the workflow's setting
    compensate: Callable[..., Any] | None = None
    cache: bool | None = None  # None: the workflow's setting
    cache_ttl: float | None = None  # seconds a cached output stays usable (None: forever)
    version: str = ""  # bump to invalidate caches and mark the step changed without editing code
    model: str | None = None  # the LLM an llm_step calls
    process: bool | None = None  # run in a process of the runtime's pool; None: the workflow's setting
    distribute: bool = False  # a map_over step whose children any worker may claim (engine/distributed.py)
    params: tuple[Param, ...] = ()
    is_async: bool = False
    # resolved by Workflow.validate()
    depends_on: tuple[str, ...] = field(default=())
    input_params: tuple[Param, ...] = field(default=())
    _fingerprint: str | None = field(default=None, repr=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def fingerprint(self) -> str:
        """What the step is: its code (and its condition and compensation), declared version and
        dependencies. A change means its stored output may no longer be what it would produce.
        Computed once: a loaded definition does not change under a running process."""
        if self._fingerprint is None:
            parts = [self.name, self.version, ",".join(self.depends_on), self.map_over or ""]
            for fn in (self.fn, self.when, self.compensate):
                parts.append(_source(fn) if fn is not None else "")
            self._fingerprint = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]
        return self._fingerprint


def _source(fn: Callable[..., Any]) -> str:
    """Source text when Python can find it; the compiled code otherwise (generated functions)."""
    target = getattr(fn, "__statepipe_source__", fn)
    try:
        return inspect.getsource(target)
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        return repr((code.co_code, code.co_consts)) if code is not None else repr(target)


def _params_of(fn: Callable[..., Any], what: str) -> tuple[Param, ...]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise DefinitionError(f"{what}: cannot read its signature ({exc})") from exc
    params = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise DefinitionError(f"{what}: *args/**kwargs are not supported; name each input")
        if p.kind is p.POSITIONAL_ONLY:
            raise DefinitionError(f"{what}: positional-only parameter {p.name!r}; use a named one")
        has_default = p.default is not inspect.Parameter.empty
        params.append(Param(p.name, has_default, p.default if has_default else None))
    return tuple(params)


def _ref_name(ref: Any, what: str) -> str:
    if isinstance(ref, Step):
        return ref.name
    if isinstance(ref, str) and ref:
        return ref
    raise DefinitionError(f"{what}: dependencies must be steps or step names, got {ref!r}")


class Workflow:
    """A named DAG of steps. Build it with the `step` decorator; it validates itself on first use."""

    def __init__(
        self,
        name: str,
        *,
        description: str = "",
        retry: RetryPolicy | None = None,
        max_concurrency: int = 32,
        result: str | None = None,
        timeout: float | None = None,
        models: Iterable[str] = (),
        cache: bool = False,
        max_abandoned: int = 5,
        extra_inputs: bool = False,
        process: bool = False,
        **hooks: Callable[..., Any],
    ) -> None:
        """`timeout` bounds the whole run in seconds; `models` names the LLMs its steps call
        (llm_step adds its own), so a missing API key is reported before the run starts;
        `cache` lets every step reuse a succeeded attempt with the same cache key from any run
        (steps may opt in or out themselves); `max_abandoned` is how many attempts of a step in
        a row may die with their process before the step fails instead of running again (a
        crash loop ends); `extra_inputs` accepts run-input keys no step parameter names (for
        hooks or steps that read `ctx.input`), which are otherwise refused as typos;
        `process` runs every plain sync step in a process (see `step`), async and LLM steps
        excepted, since they wait rather than compute; `on_init`, `on_progress`, `on_retry`,
        `on_error`, `on_success` and `on_complete` are hooks called as hook(ctx, meta)."""
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise DefinitionError(f"workflow name {name!r}: use letters, digits, '_' or '-'")
        if max_concurrency < 1:
            raise DefinitionError(f"workflow {name}: max_concurrency must be at least 1")
        self.name = name
        self.description = description
        self.retry = retry or RetryPolicy()
        self.max_concurrency = max_concurrency
        if max_abandoned < 1:
            raise DefinitionError(f"workflow {name}: max_abandoned must be at least 1")
        self.max_abandoned = max_abandoned
        self.extra_inputs = extra_inputs
        self.process = process
        self.result_step = result
        if timeout is not None and timeout <= 0:
            raise DefinitionError(f"workflow {name}: timeout must be positive")
        self.timeout = timeout
        unknown = sorted(set(hooks) - set(HOOKS))
        if unknown:
            raise DefinitionError(f"workflow {name}: unknown option {unknown[0]!r}; hooks are {', '.join(HOOKS)}")
        self.hooks: dict[str, Callable[..., Any]] = dict(hooks)
        self.models: list[str] = list(models)
        self.cache = cache
        self._steps: dict[str, Step] = {}
        self._order: list[str] | None = None

    # -- building ---------------------------------------------------------------------------

    def step(  # noqa: C901 - one decorator, one validation per option
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        after: Iterable[Any] = (),
        map_over: Any = None,
        when: Callable[..., bool] | None = None,
        retries: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        concurrency: int | None = None,
        item_key: Callable[[Any], str] | None = None,
        description: str | None = None,
        optional: bool = False,
        on_exhausted: str = "fail",
        max_abandoned: int | None = None,
        compensate: Callable[..., Any] | None = None,
        cache: bool | None = None,
        cache_ttl: float | None = None,
        version: str = "",
        process: bool | None = None,
        distribute: bool = False,
    ) -> Any:
        """Decorator registering a step. `retries=N` is shorthand for N retries after the first
        attempt with the workflow's backoff; `retry=RetryPolicy(...)` says everything.

        When retries run out the run fails, unless `optional` (dependents get None) or
        `on_exhausted="pause"` (the run rests paused for a human). `compensate(ctx, output)`
        undoes the step when the run fails or is cancelled with compensation. `cache=True`
        reuses a succeeded attempt of any run whose inputs, upstream outputs, code and
        `version` match (for `cache_ttl` seconds, or forever). `process=True` runs the step in
        a process of the runtime's pool: CPU-bound steps then run in parallel, and its timeout, a
        cancel or `pause --now` kill the process (a thread cannot be stopped). Its function must
        be a `def` at the top level of the workflow's file, which the process imports.
        `distribute=True` (map_over steps) lets any `statepipe worker` on the same database claim
        the children, `concurrency` then limiting them across all workers (README: "Spreading a
        fan-out over workers")."""

        def register(f: Callable[..., Any]) -> Step:
            step_name = name or f.__name__
            what = f"workflow {self.name}, step {step_name}"
            if step_name in self._steps:
                raise DefinitionError(f"{what}: duplicate step name")
            if not STEP_NAME.fullmatch(step_name):
                raise DefinitionError(f"{what}: step names use letters, digits, '_' or '-'")
            if on_exhausted not in ("fail", "pause"):
                raise DefinitionError(f"{what}: on_exhausted must be 'fail' or 'pause'")
            if optional and on_exhausted == "pause":
                raise DefinitionError(f"{what}: an optional step cannot also pause the run")
            if step_name in RESERVED_PARAMS:
                raise DefinitionError(f"{what}: {step_name!r} is reserved; rename the step")
            if retries is not None and retry is not None:
                raise DefinitionError(f"{what}: give retries= or retry=, not both")
            if retries is not None and retries < 0:
                raise DefinitionError(f"{what}: retries must be >= 0")
            if timeout is not None and timeout <= 0:
                raise DefinitionError(f"{what}: timeout must be positive")
            if concurrency is not None and concurrency < 1:
                raise DefinitionError(f"{what}: concurrency must be at least 1")
            if max_abandoned is not None and max_abandoned < 1:
                raise DefinitionError(f"{what}: max_abandoned must be at least 1")
            if process and inspect.iscoroutinefunction(f):
                raise DefinitionError(f"{what}: an async step cannot run in a process; it waits rather than computes")
            params = _params_of(f, what)
            source = _ref_name(map_over, what) if map_over is not None else None
            if source is not None and "item" not in {p.name for p in params}:
                raise DefinitionError(f"{what}: a map_over step needs an 'item' parameter")
            if source is None and "item" in {p.name for p in params}:
                raise DefinitionError(f"{what}: 'item' is only given to map_over steps")
            if concurrency is not None and source is None:
                raise DefinitionError(f"{what}: concurrency applies to map_over steps only")
            if distribute and source is None:
                raise DefinitionError(f"{what}: distribute applies to map_over steps only")
            if distribute and compensate is not None:
                raise DefinitionError(f"{what}: a distributed step cannot have a compensation (not supported yet)")
            policy = retry
            if retries is not None:
                policy = self.retry.with_attempts(retries + 1)
            doc = description if description is not None else inspect.getdoc(f) or ""
            step = Step(
                name=step_name,
                fn=f,
                after=tuple(_ref_name(a, what) for a in after),
                map_over=source,
                when=when,
                retry=policy,
                timeout=timeout,
                concurrency=concurrency,
                item_key=item_key,
                description=doc.strip().splitlines()[0] if doc.strip() else "",
                optional=optional,
                on_exhausted=on_exhausted,
                max_abandoned=max_abandoned,
                compensate=compensate,
                cache=cache,
                cache_ttl=cache_ttl,
                version=version,
                process=process,
                distribute=distribute,
                params=params,
                is_async=inspect.iscoroutinefunction(f),
            )
            self._steps[step_name] = step
            self._order = None
            return step

        return register(fn) if fn is not None else register

    def llm_step(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        model: str,
        shape: str = "text",
        schema: Any = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        on_truncated: str = "keep",
        **step_options: Any,
    ) -> Any:
        """A step whose function returns the prompt (a string or a list of messages) from its
        inputs; statepipe calls `model` and the step's output is the reply: text, or for
        shape "json" / "ndjson" / "json_mode" the validated structured value. It retries three
        times by default, feeding a schema error back to the model. `on_truncated="retry"` makes
        a reply cut at `max_tokens` a failed attempt; by default it is kept, marked truncated."""
        from statepipe.llm import api
        from statepipe.llm.calls import ON_TRUNCATED

        if shape not in ("text", "json", "ndjson", "json_mode"):
            raise DefinitionError(f"workflow {self.name}: llm_step shape must be text, json, ndjson or json_mode")
        if shape != "text" and schema is None:
            raise DefinitionError(f"workflow {self.name}: llm_step with shape {shape!r} needs a schema")
        if on_truncated not in ON_TRUNCATED:
            raise DefinitionError(f"workflow {self.name}: llm_step on_truncated must be {' or '.join(ON_TRUNCATED)}")
        if step_options.get("process"):
            raise DefinitionError(f"workflow {self.name}: an llm_step cannot run in a process; it waits on the model rather than computes")

        def register(prompt_fn: Callable[..., Any]) -> Step:
            prompt_params = _params_of(prompt_fn, f"workflow {self.name}, step {prompt_fn.__name__}")
            wants_ctx = any(p.name == "ctx" for p in prompt_params)

            def run(ctx: Any, **inputs: Any) -> Any:
                prompt = prompt_fn(ctx=ctx, **inputs) if wants_ctx else prompt_fn(**inputs)
                common: dict[str, Any] = {"model": model, "system": system, "temperature": temperature,
                                          "max_tokens": max_tokens, "on_truncated": on_truncated}
                if shape == "text":
                    return api.text(ctx, prompt, **common)
                if shape == "ndjson":
                    return api.ndjson(ctx, prompt, item=schema, **common)
                return api.json(ctx, prompt, schema=schema, streamed=shape == "json", **common)

            params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD)] + [
                inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default if p.has_default else inspect.Parameter.empty)
                for p in prompt_params
                if p.name != "ctx"
            ]
            run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
            run.__statepipe_source__ = prompt_fn  # type: ignore[attr-defined]  # its code is the prompt's
            run.__name__ = prompt_fn.__name__
            run.__doc__ = prompt_fn.__doc__
            if model not in self.models:
                self.models.append(model)
            options = dict(step_options)
            call = {"model": model, "shape": shape, "system": system, "temperature": temperature, "max_tokens": max_tokens,
                    "schema": api.json_schema(schema) if schema is not None else None}
            options["version"] = options.get("version", "") + json.dumps(call, sort_keys=True, default=str)
            if "retries" not in options and "retry" not in options:
                options["retry"] = RetryPolicy(max_attempts=3, initial_interval=0.5, backoff="exponential")
            step = self.step(run, **options)
            step.model = model
            return step

        return register(fn) if fn is not None else register

    # -- reading ----------------------------------------------------------------------------

    @property
    def steps(self) -> list[Step]:
        """Steps in a topological order (dependencies first), validating on first access."""
        return [self._steps[n] for n in self.validate()]

    def __getitem__(self, name: str) -> Step:
        self.validate()
        return self._steps[name]

    def __contains__(self, name: object) -> bool:
        return name in self._steps

    def policy_for(self, step: Step) -> RetryPolicy:
        return step.retry or self.retry

    def abandon_limit(self, step: Step) -> int:
        return step.max_abandoned or self.max_abandoned

    def dependents(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {n: [] for n in self.validate()}
        for s in self.steps:
            for d in s.depends_on:
                out[d].append(s.name)
        return out

    def sinks(self) -> list[str]:
        """Steps nothing depends on: their outputs make up the run's result."""
        if self.result_step:
            return [self.result_step]
        return [n for n, deps in self.dependents().items() if not deps]

    def fingerprint(self) -> dict[str, str]:
        """Each step's fingerprint, recorded with every run so resume and rerun can say which
        steps changed since."""
        return {s.name: s.fingerprint() for s in self.steps}

    def cached(self, step: Step) -> bool:
        return self.cache if step.cache is None else step.cache

    def in_process(self, step: Step) -> bool:
        """Whether the step runs in a process of the pool (engine/pool.py) rather than on a thread."""
        if step.process is not None:
            return step.process
        return self.process and not step.is_async and step.model is None

    def descendants(self, names: Iterable[str]) -> list[str]:
        """The named steps and everything downstream of them, in topological order."""
        marked = set(names)
        for s in self.steps:
            if any(d in marked for d in s.depends_on):
                marked.add(s.name)
        return [s.name for s in self.steps if s.name in marked]

    def validate(self) -> list[str]:
        if self._order is not None:
            return self._order
        if not self._steps:
            raise DefinitionError(f"workflow {self.name}: it has no steps")
        for s in self._steps.values():
            what = f"workflow {self.name}, step {s.name}"
            deps: list[str] = []
            inputs: list[Param] = []
            for ref in s.after + ((s.map_over,) if s.map_over else ()):
                if ref not in self._steps:
                    raise DefinitionError(f"{what}: depends on unknown step {ref!r}")
                if ref == s.name:
                    raise DefinitionError(f"{what}: depends on itself")
                if ref not in deps:
                    deps.append(ref)
            for p in s.params:
                if p.name in RESERVED_PARAMS:
                    continue
                if p.name in self._steps:
                    if p.name == s.name:
                        raise DefinitionError(f"{what}: a parameter cannot name its own step")
                    if p.name not in deps:
                        deps.append(p.name)
                else:
                    inputs.append(p)
            if self.in_process(s) and "<" in s.fn.__qualname__:  # <lambda>, <locals>
                raise DefinitionError(
                    f"{what}: a process step's function must be a def at the top level of the workflow's file, "
                    f"which its process imports; {s.fn.__qualname__} is not"
                    + ("" if s.process else " (process=False keeps it on a thread)")
                )
            s.depends_on = tuple(deps)
            s.input_params = tuple(inputs)
            s._fingerprint = None  # dependencies are part of it
        if self.result_step is not None and self.result_step not in self._steps:
            raise DefinitionError(f"workflow {self.name}: result step {self.result_step!r} is unknown")
        sorter = graphlib.TopologicalSorter({s.name: s.depends_on for s in self._steps.values()})
        try:
            order = list(sorter.static_order())
        except graphlib.CycleError as exc:
            cycle = " -> ".join(exc.args[1])
            raise DefinitionError(f"workflow {self.name}: dependency cycle {cycle}") from exc
        # keep declaration order among independent steps, for stable display
        position = {n: i for i, n in enumerate(self._steps)}
        self._order = _stable_topological(order, position, self._steps)
        return self._order

    def inputs(self) -> list[str] | None:
        """The run-input keys something reads: steps' parameters and compensations' extra ones.
        None when any key may be read (a step or compensation takes `input`, or `extra_inputs`)."""
        if self.extra_inputs:
            return None
        names: set[str] = set()
        for s in self.steps:
            if any(p.name == "input" for p in s.params):
                return None
            names.update(p.name for p in s.input_params)
            if s.compensate is not None:  # given its output, item and input, and input keys by name
                extra = set(inspect.signature(s.compensate).parameters) - {"ctx", "output", "item"}
                if "input" in extra:
                    return None
                names |= extra
        return sorted(names)

    def check_input(self, data: dict[str, Any], known: Iterable[str] = ()) -> None:
        """Refuse a run before it is created when a step would lack an input, or when a key is
        one nothing reads: a typo there would otherwise run with the default silently. `known`:
        keys accepted as they are (those an existing run already had)."""
        missing: dict[str, list[str]] = {}
        for s in self.steps:
            for p in s.input_params:
                if p.name not in data and not p.has_default:
                    missing.setdefault(p.name, []).append(s.name)
        if missing:
            name, needed_by = next(iter(missing.items()))
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InputError(
                f"workflow {self.name} needs input {name!r} (used by step {', '.join(needed_by)}){more}; "
                f"pass -i {name}=..."
            )
        accepted = self.inputs()
        if accepted is None:
            return
        allowed = set(accepted) | set(known)
        unknown = [k for k in data if k not in allowed]
        if unknown:
            close = difflib.get_close_matches(unknown[0], accepted, n=1)
            raise InputError(
                f"workflow {self.name} has no input {unknown[0]!r}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + (f"; its inputs: {', '.join(accepted)}" if accepted else "; it takes no input")
            )

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, steps={list(self._steps)})"

    def run(self, **input: Any) -> Any:
        """Run the workflow to its end in this process, against the default database (as
        `statepipe run`: STATEPIPE_DATABASE_URL, else the embedded server), and return its
        result: the one-liner for scripts and notebooks. Raises RunFailed (naming the failing
        step and its error) or RunCancelled. For anything more, use statepipe.Client."""
        from statepipe.client.api import Client

        with Client(workflows=[self]) as client:
            return client.start(self, input).result()


def _stable_topological(
    order: list[str], position: dict[str, int], steps: dict[str, Step]
) -> list[str]:
    placed: list[str] = []
    done: set[str] = set()
    remaining = sorted(order, key=position.__getitem__)
    while remaining:
        for n in remaining:
            if all(d in done for d in steps[n].depends_on):
                placed.append(n)
                done.add(n)
                remaining.remove(n)
                break
    return placed
