"""statepipe: durable, observable DAG workflows for long AI pipelines, on PostgreSQL.

The public names load on first use, so the CLI's quick commands do not pay for the engine."""

from typing import Any

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
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'statepipe' has no attribute {name!r}")
