"""Workflow definitions: steps, dependencies, policies, and finding workflows by name."""

from statepipe.definition.policy import RetryPolicy
from statepipe.definition.workflow import Step, Workflow

__all__ = ["RetryPolicy", "Step", "Workflow"]
