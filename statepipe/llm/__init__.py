"""LLM steps: calling language models from workflow steps, with streamed tokens and structured output."""

from statepipe.llm.api import InvalidReply, chat, json, ndjson, stream, text, validate
from statepipe.llm.calls import MissingAPIKey, ModelUnavailable, ReplyTruncated
from statepipe.llm.models import ModelConfig, configure, model_config

__all__ = [
    "InvalidReply",
    "MissingAPIKey",
    "ModelConfig",
    "ModelUnavailable",
    "ReplyTruncated",
    "chat",
    "configure",
    "json",
    "model_config",
    "ndjson",
    "stream",
    "text",
    "validate",
]
