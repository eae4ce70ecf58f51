"""statepipe: durable, observable DAG workflows for long AI pipelines, on PostgreSQL.

The public names load on first use, so the CLI's quick commands do not pay for the engine."""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "Workflow": "statepipe.definition.workflow",
    "Step": "statepipe.definition.workflow",
    "RetryPolicy": "statepipe.definition.policy",
    "StepContext": "statepipe.engine.context",
    "StepInterrupted": "statepipe.engine.context",
    "NonRetryable": "statepipe.errors",
    "InputError": "statepipe.errors",
    "StatepipeError": "statepipe.errors",
    "RunFailed": "statepipe.errors",
    "RunCancelled": "statepipe.errors",
    "Client": "statepipe.client.api",
    "RunHandle": "statepipe.client.api",
    "AsyncClient": "statepipe.client.aio",
    "AsyncRunHandle": "statepipe.client.aio",
}
__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:  # what __getattr__ gives, for type checkers
    from statepipe.client.aio import AsyncClient as AsyncClient
    from statepipe.client.aio import AsyncRunHandle as AsyncRunHandle
    from statepipe.client.api import Client as Client
    from statepipe.client.api import RunHandle as RunHandle
    from statepipe.definition.policy import RetryPolicy as RetryPolicy
    from statepipe.definition.workflow import Step as Step
    from statepipe.definition.workflow import Workflow as Workflow
    from statepipe.engine.context import StepContext as StepContext
    from statepipe.engine.context import StepInterrupted as StepInterrupted
    from statepipe.errors import InputError as InputError
    from statepipe.errors import NonRetryable as NonRetryable
    from statepipe.errors import RunCancelled as RunCancelled
    from statepipe.errors import RunFailed as RunFailed
    from statepipe.errors import StatepipeError as StatepipeError


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'statepipe' has no attribute {name!r}")
