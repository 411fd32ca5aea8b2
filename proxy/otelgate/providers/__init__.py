"""Provider adapters: the only place that knows Anthropic's and OpenAI's wire formats."""

from otelgate.providers.anthropic import AnthropicProvider
from otelgate.providers.base import Provider, Route, StreamParser, TextRef
from otelgate.providers.openai import OpenAIProvider

ANTHROPIC = AnthropicProvider()
OPENAI = OpenAIProvider()
PROVIDERS: dict[str, Provider] = {"anthropic": ANTHROPIC, "openai": OPENAI}

__all__ = ["ANTHROPIC", "OPENAI", "PROVIDERS", "Provider", "Route", "StreamParser", "TextRef"]
