"""LLM steps: calling language models from workflow steps, with streamed tokens and structured output.

The public names load on first use (as statepipe's own do): `statepipe run` checks a workflow's
model keys through statepipe.llm.models, and a workflow with no LLM step should not pay for
pydantic and the HTTP stack to start."""

from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "InvalidReply": "statepipe.llm.api",
    "chat": "statepipe.llm.api",
    "json": "statepipe.llm.api",
    "ndjson": "statepipe.llm.api",
    "stream": "statepipe.llm.api",
    "text": "statepipe.llm.api",
    "validate": "statepipe.llm.api",
    "MissingAPIKey": "statepipe.llm.calls",
    "ModelUnavailable": "statepipe.llm.calls",
    "ReplyTruncated": "statepipe.llm.calls",
    "ModelConfig": "statepipe.llm.models",
    "configure": "statepipe.llm.models",
    "model_config": "statepipe.llm.models",
}
__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:  # what __getattr__ gives, for type checkers
    from statepipe.llm.api import InvalidReply as InvalidReply
    from statepipe.llm.api import chat as chat
    from statepipe.llm.api import json as json
    from statepipe.llm.api import ndjson as ndjson
    from statepipe.llm.api import stream as stream
    from statepipe.llm.api import text as text
    from statepipe.llm.api import validate as validate
    from statepipe.llm.calls import MissingAPIKey as MissingAPIKey
    from statepipe.llm.calls import ModelUnavailable as ModelUnavailable
    from statepipe.llm.calls import ReplyTruncated as ReplyTruncated
    from statepipe.llm.models import ModelConfig as ModelConfig
    from statepipe.llm.models import configure as configure
    from statepipe.llm.models import model_config as model_config


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'statepipe.llm' has no attribute {name!r}")
