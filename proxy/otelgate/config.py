"""Configuration: one YAML file validated by pydantic, every field overridable by ``OTELGATE_<SECTION>__<FIELD>``.

The field names here are a public interface (users' files and scripts depend on them): add fields, rename none.
Secrets are ``SecretStr``; in YAML they may be written as ``${ENV_VAR}`` (any string value may use
``${VAR}`` / ``${VAR:-default}``) or ``file:/run/secrets/x``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_CONFIG_ENV = "OTELGATE_CONFIG"


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the offending field path."""


class _Model(BaseModel):
    # Unknown keys are errors naming their path: a typo must not silently turn a limit off.
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _read_secret(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("file:"):
        path = Path(value[len("file:") :])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    return value


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8787, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    drain_seconds: float = Field(30.0, ge=0)
    max_json_depth: int = Field(64, ge=4)
    max_messages: int = Field(10_000, ge=1)
    max_header_bytes: int = Field(65_536, ge=1024)


class AuthConfig(_Model):
    mode: Literal["passthrough", "virtual_keys"] = "passthrough"
    admin_key: SecretStr | None = None

    _secret = field_validator("admin_key", mode="before")(_read_secret)


class Timeouts(_Model):
    connect: float = Field(5.0, gt=0)
    first_byte: float = Field(120.0, gt=0)
    idle: float = Field(60.0, gt=0)
    total: float = Field(600.0, gt=0)


class RetryConfig(_Model):
    max_attempts: int = Field(4, ge=1, le=20)
    base_delay: float = Field(0.5, ge=0)
    max_delay: float = Field(20.0, ge=0)
    # After otelgate gave up on a retryable failure, tell the SDK not to retry again: its own retries would
    # multiply the attempts (4 of ours x 3 of the SDK's = 12 hits on an overloaded upstream).
    disable_client_retries: bool = True


class CircuitConfig(_Model):
    enabled: bool = True
    window_seconds: float = Field(30.0, gt=0)
    min_calls: int = Field(10, ge=1)
    failure_ratio: float = Field(0.5, gt=0, le=1)
    cooldown_seconds: float = Field(15.0, gt=0)
    half_open_probes: int = Field(2, ge=1)


class UpstreamConfig(_Model):
    base_url: str
    api_key: SecretStr | None = None
    timeouts: Timeouts = Timeouts()
    retry: RetryConfig = RetryConfig()
    circuit: CircuitConfig = CircuitConfig()
    # model -> ordered fallbacks: another model name, or "url:https://other-base" for another base URL.
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    max_inflight: int = Field(1024, ge=1)
    max_queue_wait: float = Field(2.0, ge=0)
    # At most this many requests wait for an in-flight slot; beyond, an immediate 529 (Anthropic) / 503 (OpenAI).
    max_queue: int = Field(1024, ge=0)
    propagate_trace_context: bool = False
    pool_size: int = Field(512, ge=1)

    _secret = field_validator("api_key", mode="before")(_read_secret)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http(s) URL such as https://api.anthropic.com")
        return value.rstrip("/")


class AnthropicUpstreamConfig(UpstreamConfig):
    base_url: str = "https://api.anthropic.com"


class OpenAIUpstreamConfig(UpstreamConfig):
    base_url: str = "https://api.openai.com/v1"
    # Ask Chat Completions streams to report usage (stream_options.include_usage) when the agent did not, and take
    # the added chunk out again. An upstream that answers 400 naming stream_options gets the agent's own request
    # and is not asked again; false skips even that first try. Unasked streams are charged their worst case.
    stream_usage: bool = True


class UpstreamsConfig(_Model):
    # Each provider keeps its public endpoint unless base_url is given: `anthropic: {api_key: ...}` is enough.
    anthropic: AnthropicUpstreamConfig = AnthropicUpstreamConfig()
    openai: OpenAIUpstreamConfig = OpenAIUpstreamConfig()


class SessionLimits(_Model):
    max_calls: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    max_usd: float | None = Field(None, gt=0)


class Limits(_Model):
    max_tokens_per_request: int | None = Field(None, ge=1)
    # clamp: lower max_tokens to the cap (said in x-otelgate-max-tokens-clamped) | refuse: 400
    on_max_tokens: Literal["clamp", "refuse"] = "clamp"
    max_input_tokens: int | None = Field(None, ge=1)
    max_usd_per_request: float | None = Field(None, gt=0)
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    session: SessionLimits | None = None


class BudgetSpec(_Model):
    window: Literal["day", "month"] | None = None
    hours: int | None = Field(None, ge=1, le=24 * 366)
    usd: float | None = Field(None, gt=0)
    tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_window(self) -> BudgetSpec:
        if (self.window is None) == (self.hours is None):
            raise ValueError("give exactly one of window: day|month or hours: N")
        if self.usd is None and self.tokens is None:
            raise ValueError("give usd and/or tokens")
        return self

    @property
    def window_name(self) -> str:
        return self.window if self.window else f"hours_{self.hours}"


ToolLevel = Literal["read", "write", "execute", "admin"]


class ToolPolicy(_Model):
    # None: every tool allowed. A list: only these names (exact, or fnmatch patterns like "fs_*").
    allowed_tools: list[str] | None = None
    # The highest permission level a tool may have for this principal; tools' levels come from tool_levels.
    max_tool_level: ToolLevel | None = None
    # remove: strip forbidden tools from the request's `tools` | refuse: 403
    on_forbidden_tool: Literal["remove", "refuse"] = "remove"
    # A complete (non-streaming) answer that still calls a forbidden tool: refuse: 403, nothing relayed | flag:
    # relay it and record a verdict. A stream is refused by ending it, with an error event, where the call starts.
    on_forbidden_response: Literal["refuse", "flag"] = "refuse"


class KeyConfig(ToolPolicy):
    id: str = Field(pattern=r"^[A-Za-z0-9_.:@-]{1,128}$")
    key_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    team: str | None = None
    limits: Limits = Limits()
    budgets: list[BudgetSpec] = Field(default_factory=list)
    screening: Literal["block", "flag", "redact", "off"] | None = None


class TeamConfig(ToolPolicy):
    id: str = Field(pattern=r"^[A-Za-z0-9_.:@-]{1,128}$")
    budgets: list[BudgetSpec] = Field(default_factory=list)


class DefaultsConfig(_Model):
    limits: Limits = Limits()
    budgets: list[BudgetSpec] = Field(default_factory=list)


class ModelPrice(_Model):
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(None, ge=0)
    cache_write: float | None = Field(None, ge=0)


class BudgetsConfig(_Model):
    store: str = "sqlite:///./otelgate.db"
    on_store_error: Literal["closed", "open"] = "closed"
    store_timeout: float = Field(0.25, gt=0)
    # Consecutive calls that got no answer at all before the store counts as down (a slow answer under load
    # refuses only its own request).
    store_down_after: int = Field(3, ge=1)
    alert_thresholds: list[float] = Field(default_factory=lambda: [0.5, 0.8, 1.0])
    alertmanager_url: str | None = None
    timezone: str = "UTC"
    pricing: dict[str, ModelPrice] = Field(default_factory=dict)
    default_price: ModelPrice = ModelPrice(input=15.0, output=75.0, cache_read=1.5, cache_write=18.75)
    global_budgets: list[BudgetSpec] = Field(default_factory=list, alias="global")
    reservation_ttl_seconds: float = Field(900.0, gt=0)
    # A session cap counts from the session's first call and forgets it after this long without a call.
    session_ttl_seconds: int = Field(86400, ge=60)
    # The same for a session the gateway derived from the conversation's opening (the caller sent no run id): two
    # runs of one agent with the same prompt (a scheduled job, a test suite) hash alike and are told apart only by
    # the pause between them. A runaway loop never pauses, so its cap still holds.
    derived_session_ttl_seconds: int = Field(1800, ge=60)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        if not (value.startswith("sqlite://") or value.startswith(("redis://", "rediss://", "unix://"))):
            raise ValueError("must be sqlite:///path or redis://host:port/db")
        return value


class ScreeningConfig(_Model):
    mode: Literal["block", "flag", "redact", "off"] = "block"
    scan: list[Literal["user", "tool_result", "system", "documents"]] = Field(
        default_factory=lambda: ["user", "tool_result"]
    )
    threshold: float = Field(0.5, gt=0, le=1)
    packs: list[str] = Field(default_factory=lambda: ["builtin"])
    # Outbound secrets (API keys, private keys, tokens) in a prompt or tool result.
    secrets: Literal["block", "flag", "redact", "off"] = "redact"
    # new: only this turn's texts (after the last assistant turn) | all: the whole conversation every turn.
    scope: Literal["new", "all"] = "new"
    # In block mode, a flagged tool result or document longer than 96 words (a file, a page the agent read) loses
    # its flagged stretches (recorded as action "redact") instead of the whole request being refused: the
    # planted instruction goes, the agent goes on. false: such texts block like any other.
    redact_long_tool_results: bool = True


class TelemetryConfig(_Model):
    # false: no spans, metrics or access logs at all (benchmarks of the bare proxy; not for production)
    enabled: bool = True
    capture_content: bool = False
    prometheus: bool = True
    log_requests: bool = True
    max_model_labels: int = Field(50, ge=1)
    max_key_labels: int = Field(500, ge=1)
    content_max_bytes: int = Field(16_384, ge=256)
    tool_state_max_conversations: int = Field(10_000, ge=1)
    tool_state_ttl_seconds: float = Field(3600.0, gt=0)


class Settings(BaseSettings):
    # Env names: OTELGATE_<SECTION>__<FIELD>. Top-level `extra=ignore` because OTELGATE_CONFIG and secrets
    # such as OTELGATE_ADMIN_KEY share the prefix; YAML top-level keys are checked in `load_config`.
    model_config = SettingsConfigDict(
        env_prefix="OTELGATE_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    upstreams: UpstreamsConfig = UpstreamsConfig()
    keys: list[KeyConfig] = Field(default_factory=list)
    defaults: DefaultsConfig = DefaultsConfig()
    teams: list[TeamConfig] = Field(default_factory=list)
    budgets: BudgetsConfig = BudgetsConfig()
    screening: ScreeningConfig = ScreeningConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    tool_levels: dict[str, ToolLevel] = Field(default_factory=dict)
    # The level of a tool that tool_levels does not name: execute (it may run anything on the agent's side).
    default_tool_level: ToolLevel = "execute"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment wins over the file (the file is passed as init kwargs).
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        seen: set[str] = set()
        for key in self.keys:
            if key.id in seen:
                raise ValueError(f"keys: duplicate id {key.id!r}")
            seen.add(key.id)
        teams = {team.id for team in self.teams}
        for key in self.keys:
            if key.team and self.teams and key.team not in teams:
                raise ValueError(f"keys[{key.id}].team: unknown team {key.team!r}")
        if self.auth.mode == "virtual_keys" and not self.keys:
            raise ValueError("auth.mode: virtual_keys needs at least one entry under keys")
        return self

    def team(self, team_id: str | None) -> TeamConfig | None:
        return next((team for team in self.teams if team.id == team_id), None)

    def warnings(self) -> list[str]:
        """Settings that are valid but will fail requests: shown by check-config and logged at start."""
        out = []
        if self.auth.mode == "virtual_keys":
            for name in ("anthropic", "openai"):
                if getattr(self.upstreams, name).api_key is None:
                    out.append(f"auth.mode is virtual_keys but upstreams.{name}.api_key is not set: every {name} "
                               f"request will be refused (500)")
        return out


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(node: Any, path: str = "") -> Any:
    if isinstance(node, dict):
        return {key: _expand(value, f"{path}.{key}" if path else str(key)) for key, value in node.items()}
    if isinstance(node, list):
        return [_expand(value, f"{path}[{index}]") for index, value in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def substitute(match: re.Match[str]) -> str:
            value = os.environ.get(match.group(1), match.group(2))
            if value is None:
                raise ConfigError(f"{path}: environment variable {match.group(1)} is not set")
            return value

        whole = _ENV_REF.fullmatch(node)
        if whole and os.environ.get(whole.group(1), whole.group(2)) in (None, ""):
            # `api_key: ${ANTHROPIC_API_KEY}` with the variable unset means "no key", not an error:
            # pass-through mode never needs it.
            return None
        return _ENV_REF.sub(substitute, node)
    return node


def _format_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"  {loc}: {message}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike[str] | None = None) -> Settings:
    """Load and validate a config file (or none: defaults + environment). Raises ConfigError."""
    path = path or os.environ.get(DEFAULT_CONFIG_ENV) or None
    data: dict[str, Any] = {}
    source = "defaults and environment"
    if path:
        source = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            # Only the position and the problem: PyYAML's own message quotes the offending line, which may hold
            # a literal secret.
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or "syntax error"
            raise ConfigError(f"config {path} is not valid YAML{where}: {problem}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config {path}: the top level must be a mapping")
        unknown = sorted(set(raw) - set(Settings.model_fields))
        if unknown:
            raise ConfigError(f"invalid configuration ({path}):\n  {unknown[0]}: unknown field")
        data = _expand(raw)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None


def merge_into(into: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge config data ``extra`` into ``into`` (nested sections merge, other values replace); returns
    ``into``. For building configurations in code: tests, the pytest plugin, eval gateways."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge_into(into[key], value)
        else:
            into[key] = value
    return into


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data with every secret masked (for check-config)."""
    # SecretStr dumps as "**********" in json mode; key hashes stay (a sha256 of a random key reveals nothing).
    return settings.model_dump(mode="json", by_alias=True)
