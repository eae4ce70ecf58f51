"""statepipe: durable, observable DAG workflows for long AI pipelines, on PostgreSQL."""

from statepipe.definition import RetryPolicy, Step, Workflow
from statepipe.engine.context import StepContext, StepInterrupted
from statepipe.errors import NonRetryable, StatepipeError

__all__ = ["NonRetryable", "RetryPolicy", "StatepipeError", "Step", "StepContext", "StepInterrupted", "Workflow"]
__version__ = "0.1.0"
