"""Models a workflow may call: where they live, what they cost, how hard they may be driven.

Every model not configured here uses the OpenAI-compatible endpoint in OPENAI_BASE_URL (or
OpenAI's own) with the key in OPENAI_API_KEY. `configure` adds or changes a model, so users extend
the price table and point a model at any provider."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from statepipe.errors import InputError


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_url: str | None = None  # None: OPENAI_BASE_URL, else OpenAI
    api_key_env: str = "OPENAI_API_KEY"
    input_per_mtok: float = 0.0  # USD per million prompt tokens
    output_per_mtok: float = 0.0  # USD per million completion tokens
    max_concurrency: int = 16  # calls in flight per process (a batch pool shares it out)
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute
    fallbacks: tuple[str, ...] = ()  # tried in order when this model keeps failing
    timeout: float = 600.0
    extra: dict[str, Any] = field(default_factory=dict)  # passed to every call (e.g. top_p)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1_000_000

    def key(self) -> str | None:
        return os.environ.get(self.api_key_env)

    def url(self) -> str | None:
        return self.base_url or os.environ.get("OPENAI_BASE_URL")


# Published list prices (USD per million tokens) at the time of writing; extend with configure().
_PRICES = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o4-mini": (1.10, 4.40),
}
_MODELS: dict[str, ModelConfig] = {
    name: ModelConfig(name, input_per_mtok=i, output_per_mtok=o) for name, (i, o) in _PRICES.items()
}


def configure(name: str, **settings: Any) -> ModelConfig:
    """Add a model or change some of its settings; returns the resulting configuration."""
    known = set(ModelConfig.__dataclass_fields__) - {"name"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise InputError(f"model {name}: unknown setting {unknown[0]!r}; one of {', '.join(sorted(known))}")
    if "fallbacks" in settings:
        settings["fallbacks"] = tuple(settings["fallbacks"])
    _MODELS[name] = replace(model_config(name), **settings)
    return _MODELS[name]


def model_config(name: str) -> ModelConfig:
    return _MODELS.get(name) or ModelConfig(name)


def missing_keys(models: list[str]) -> list[tuple[str, str]]:
    """(model, env var) for every model whose API key is not set. A model on a custom
    endpoint without a key env var set still needs one: local servers accept any value."""
    out = []
    for name in models:
        cfg = model_config(name)
        if not cfg.key():
            out.append((name, cfg.api_key_env))
    return out
