"""Model prices (USD per million tokens) and the cost of a call.

The built-in table is ``pricing.json`` beside this file (its ``as_of`` date and ``sources`` say where each
price was read). ``Pricing(overrides={...})`` replaces or adds models from config. A model id is looked up
exactly, then normalised (provider prefix, ``[1m]`` suffix, dated snapshot suffix, ``x.y`` vs ``x-y``), then
by the longest known id it starts with (``claude-sonnet-4-5-20250929`` → ``claude-sonnet-4-5``,
``gpt-4o-mini-2024-07-18`` → ``gpt-4o-mini``). Anything else costs ``default`` and is reported unknown.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

TABLE_PATH = Path(__file__).with_name("pricing.json")
MTOK = 1_000_000

_DATED = re.compile(r"(?:-\d{8}|-\d{4}-\d{2}-\d{2}|-\d{4}|-latest|@\d{8})$")
_DOTTED = re.compile(r"(?<=\d)\.(?=\d)")


@dataclass(frozen=True)
class TokenUsage:
    """Tokens of one call, each billed at its own rate. ``input`` excludes cache reads and writes (OpenAI's
    ``prompt_tokens`` include ``cached_tokens``: subtract them). ``cache_write`` is the 5-minute write,
    ``cache_write_1h`` the 1-hour one (Anthropic); OpenAI has no cache writes."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    cache_write_1h: int = 0
    web_searches: int = 0  # server-side web searches (Anthropic's and OpenAI's web search tools), billed per search
    file_searches: int = 0  # OpenAI's file search tool calls, billed per call

    @property
    def prompt_tokens(self) -> int:
        return self.input + self.cache_read + self.cache_write + self.cache_write_1h

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.output


@dataclass(frozen=True)
class Rates:
    input: float
    output: float
    cache_read: float
    cache_write: float
    cache_write_1h: float

    @classmethod
    def from_dict(cls, d: dict[str, Any], fallback: Rates | None = None) -> Rates:
        def pick(name: str, default: float) -> float:
            v = d.get(name)
            return float(default if v is None else v)

        inp = pick("input", fallback.input if fallback else 0.0)
        return cls(input=inp, output=pick("output", fallback.output if fallback else 0.0),
                   cache_read=pick("cache_read", fallback.cache_read if fallback else inp),
                   cache_write=pick("cache_write", fallback.cache_write if fallback else inp),
                   # Anthropic's 1-hour write is 2x input; where a table gives none, assume that ratio.
                   cache_write_1h=pick("cache_write_1h", fallback.cache_write_1h if fallback else 2 * inp))

    def cost(self, u: TokenUsage) -> float:
        return (u.input * self.input + u.output * self.output + u.cache_read * self.cache_read
                + u.cache_write * self.cache_write + u.cache_write_1h * self.cache_write_1h) / MTOK

    @property
    def max_input_rate(self) -> float:
        return max(self.input, self.cache_read, self.cache_write, self.cache_write_1h)


@dataclass(frozen=True)
class ModelPrice:
    """Rates of one model; ``long_context`` (optional) applies to the whole call once its prompt exceeds
    ``long_context_above`` tokens."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None
    cache_write_1h: float | None = None
    long_context_above: int | None = None
    long_context: Rates | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelPrice:
        lc = d.get("long_context")
        base = Rates.from_dict(d)
        return cls(input=base.input, output=base.output, cache_read=base.cache_read,
                   cache_write=base.cache_write, cache_write_1h=base.cache_write_1h,
                   long_context_above=int(lc["above_prompt_tokens"]) if lc else None,
                   long_context=Rates.from_dict(lc, base) if lc else None)

    @cached_property  # read on every priced call: built once (the instance is frozen)
    def rates(self) -> Rates:
        return Rates.from_dict({"input": self.input, "output": self.output, "cache_read": self.cache_read,
                                "cache_write": self.cache_write, "cache_write_1h": self.cache_write_1h})

    def rates_for(self, prompt_tokens: int) -> Rates:
        if self.long_context and self.long_context_above is not None and prompt_tokens > self.long_context_above:
            return self.long_context
        return self.rates


@dataclass(frozen=True)
class PriceQuote:
    model: str  # as asked
    matched: str | None  # the table id it resolved to; None when unknown
    known: bool
    price: ModelPrice
    web_search_usd: float = 0.0  # per server-side web search
    file_search_usd: float = 0.0  # per file search tool call

    def cost(self, usage: TokenUsage) -> float:
        tokens = self.price.rates_for(usage.prompt_tokens).cost(usage)
        if usage.web_searches or usage.file_searches:  # per-call tool fees, on top of the tokens
            return tokens + usage.web_searches * self.web_search_usd + usage.file_searches * self.file_search_usd
        return tokens


def _normalise(model: str) -> str:
    m = model.strip().lower()
    if "/" in m:  # "anthropic/claude-…", "openai/gpt-…", "us.anthropic.claude-…" style prefixes
        m = m.rsplit("/", 1)[1]
    m = m.removesuffix("[1m]")
    while True:
        stripped = _DATED.sub("", m)
        if stripped == m:
            return m
        m = stripped


@dataclass
class Pricing:
    overrides: dict[str, dict[str, Any] | ModelPrice] = field(default_factory=dict)
    default: dict[str, Any] | ModelPrice | None = None
    table_path: Path = TABLE_PATH

    def __post_init__(self) -> None:
        doc = _load_table(str(self.table_path))
        self.as_of: str = doc.get("as_of", "")
        self.sources: dict[str, list[str]] = doc.get("sources", {})
        self._models: dict[str, ModelPrice] = {}
        aliases: dict[str, str] = {}
        for mid, d in doc["models"].items():
            self._models[mid] = ModelPrice.from_dict(d)
            for a in d.get("aliases", []):
                aliases[a] = mid
        for mid, p in (self.overrides or {}).items():
            self._models[mid.lower()] = p if isinstance(p, ModelPrice) else ModelPrice.from_dict(p)
        for a, mid in aliases.items():
            self._models.setdefault(a, self._models[mid])
        d = self.default if self.default is not None else doc["default"]
        self._default = d if isinstance(d, ModelPrice) else ModelPrice.from_dict(d)
        # Longest first, so "gpt-4o-mini-x" resolves to gpt-4o-mini rather than gpt-4o.
        self._by_length = sorted(self._models, key=len, reverse=True)
        self._cache: dict[str, PriceQuote] = {}
        self._search_usd = float(doc.get("web_search_per_1000", 0)) / 1000
        self._file_search_usd = float(doc.get("file_search_per_1000", 0)) / 1000

    def models(self) -> list[str]:
        return sorted(self._models)

    def quote(self, model: str) -> PriceQuote:
        q = self._cache.get(model)
        if q is None:
            q = self._resolve(model)
            if len(self._cache) < 4096:  # ids come from clients: bound the memo
                self._cache[model] = q
        return q

    def _resolve(self, model: str) -> PriceQuote:
        if model in self._models:
            return PriceQuote(model, model, True, self._models[model], self._search_usd, self._file_search_usd)
        candidates = [_normalise(model)]
        candidates.append(_DOTTED.sub("-", candidates[0]))  # claude-sonnet-4.5 -> claude-sonnet-4-5
        for c in candidates:
            if c in self._models:
                return PriceQuote(model, c, True, self._models[c], self._search_usd, self._file_search_usd)
        for c in candidates:
            for mid in self._by_length:
                if c.startswith(mid + "-") or c.startswith(mid + "."):
                    return PriceQuote(model, mid, True, self._models[mid], self._search_usd, self._file_search_usd)
        return PriceQuote(model, None, False, self._default, self._search_usd, self._file_search_usd)

    def cost(self, model: str, usage: TokenUsage) -> float:
        return self.quote(model).cost(usage)

    def worst_case(self, model: str, input_tokens: int, max_output_tokens: int) -> float:
        """Price a reservation so the real bill cannot exceed it when the estimate and ``max_tokens`` hold:
        input is priced at the dearest input rate (a cache write costs more than plain input), and the
        long-context tier applies if the estimate alone crosses it."""
        price = self.quote(model).price
        rates = price.rates_for(input_tokens)
        return (input_tokens * rates.max_input_rate + max_output_tokens * rates.output) / MTOK


@lru_cache(maxsize=8)
def _load_table(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
