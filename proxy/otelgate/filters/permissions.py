"""Tool permissions: which tools a principal may offer the model, and what happens when the model calls one anyway.

A tool is permitted when the key's policy and its team's policy both permit it (either may only narrow):
``allowed_tools`` (None: any name; else exact names or fnmatch patterns such as ``fs_*``) and ``max_tool_level``
(read < write < execute < admin; a tool's level comes from ``tool_levels`` — exact names, then patterns — and a
tool it does not name counts as ``default_tool_level``, ``execute`` unless configured: an unknown tool may run
anything on the agent's side, so it must not pass a read-only policy by being unlisted).

Request: forbidden tools are removed from ``tools`` (and a ``tool_choice`` forcing one is dropped), or the request
is refused (403) when the policy says ``on_forbidden_tool: refuse``. Response: a complete answer that still calls a
forbidden tool (the model may name a tool from the conversation's history) is refused before the agent sees any
of it, or flagged (``on_forbidden_response: flag``). A streamed one is refused as it passes: the relay asks
``stream_guard`` whenever the stream has named a new tool call, and a forbidden one ends the stream with an error
event before the bytes naming it are sent (events read from the upstream before those bytes have reached the
agent; no tool call it may not use does). Agents that always stream (Claude Code, Codex) would otherwise run the
tool. Flagged streams are flagged in ``done``. Stricter wins when key and team disagree on refuse/remove or
refuse/flag.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from otelgate.errors import GatewayError

if TYPE_CHECKING:
    from otelgate.config import Settings, ToolPolicy
    from otelgate.context import RequestContext

LEVELS = {"read": 0, "write": 1, "execute": 2, "admin": 3}
REMOVED_HEADER = "x-otelgate-tools-removed"
_MAX_NAME = 64  # tool names in messages and headers are cut to this many characters


def _configured(ctx: RequestContext) -> list[ToolPolicy]:
    principal = ctx.principal
    if principal is None:
        return []
    return [policy for policy in (principal.key, principal.team_config) if policy is not None]


def _policies(ctx: RequestContext) -> list[ToolPolicy]:
    """The policies that restrict anything (an anonymous pass-through key has none)."""
    return [p for p in _configured(ctx) if p.allowed_tools is not None or p.max_tool_level is not None]


class PermissionsFilter:
    name = "permissions"

    def __init__(self, settings: Settings) -> None:
        self.default_level = settings.default_tool_level
        self.exact = {name: level for name, level in settings.tool_levels.items() if not _is_pattern(name)}
        self.patterns = [(name, level) for name, level in settings.tool_levels.items() if _is_pattern(name)]

    def level(self, tool: str) -> str:
        level = self.exact.get(tool)
        if level is not None:
            return level
        for pattern, pattern_level in self.patterns:
            if fnmatchcase(tool, pattern):
                return pattern_level
        return self.default_level

    def why_forbidden(self, tool: str, policies: list[ToolPolicy]) -> str | None:
        """None when every policy permits the tool, else a short reason naming the rule (never a secret)."""
        for policy in policies:
            allowed = policy.allowed_tools
            if allowed is not None and not any(tool == p or fnmatchcase(tool, p) for p in allowed):
                return "not in allowed_tools"
            ceiling = policy.max_tool_level
            if ceiling is not None:
                level = self.level(tool)
                if LEVELS[level] > LEVELS[ceiling]:
                    return f"level {level} above max_tool_level {ceiling}"
        return None

    async def request(self, ctx: RequestContext) -> None:
        if not ctx.route.generates or ctx.json is None:
            return
        policies = _policies(ctx)
        if not policies:
            return
        if ctx.stream and self._refuses_answers(ctx):
            ctx.stream_guard = self._judge_stream
        forbidden: dict[str, str] = {}
        for tool in ctx.provider.tool_names(ctx.json):
            why = self.why_forbidden(tool, policies)
            if why is not None:
                forbidden.setdefault(tool, why)
        if not forbidden:
            return
        key_id = ctx.principal.key_id if ctx.principal else "?"
        if any(policy.on_forbidden_tool == "refuse" for policy in _configured(ctx)):
            tool, why = next(iter(forbidden.items()))
            raise GatewayError(
                "permission",
                f"tool {tool[:_MAX_NAME]!r} is not permitted for key {key_id} ({why})",
                reason="tool_permission",
            )
        ctx.provider.remove_tools(ctx.json, set(forbidden))  # also drops a tool_choice that forced one of them
        ctx.body_modified = True
        names = sorted(name[:_MAX_NAME] for name in forbidden)
        ctx.response_headers[REMOVED_HEADER] = ",".join(names)
        ctx.event("tool_permission.removed", tools=names)

    def response(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        found = self._forbidden_calls(ctx)
        if not found:
            return
        if self._refuses_answers(ctx):
            raise self._refusal(ctx, found, "the answer was withheld")
        self._flag(ctx, found)

    def _judge_stream(self, ctx: RequestContext) -> GatewayError | None:
        # A call whose name has not arrived yet is not judged (an empty name is in no allow-list): the relay asks
        # again until it has one.
        found = [(name, why) for name, why in self._forbidden_calls(ctx) if name]
        return self._refusal(ctx, found, "the stream was ended before it") if found else None

    async def done(self, ctx: RequestContext) -> None:
        # Streams: a complete answer was judged in `response`. A stream not refused while it passed (a flag policy,
        # or a call the guard never saw whole) is flagged here if it called a forbidden tool.
        if ctx.stream and ctx.rejected_reason != "tool_permission" and ctx.status is not None and ctx.status < 400:
            found = self._forbidden_calls(ctx)
            if found:
                self._flag(ctx, found)

    @staticmethod
    def _refuses_answers(ctx: RequestContext) -> bool:
        return any(policy.on_forbidden_response == "refuse" for policy in _configured(ctx))

    @staticmethod
    def _refusal(ctx: RequestContext, found: list[tuple[str, str]], what: str) -> GatewayError:
        tool, why = found[0]
        for name, reason in found:
            ctx.event("tool_permission.refused", tool=name[:_MAX_NAME], reason=reason)
        return GatewayError(
            "permission",
            f"the model called tool {tool[:_MAX_NAME]!r}, which is not permitted for key "
            f"{ctx.principal.key_id if ctx.principal else '?'} ({why}); {what}",
            reason="tool_permission",
        )

    def _forbidden_calls(self, ctx: RequestContext) -> list[tuple[str, str]]:
        if not ctx.result.tool_calls:
            return []
        policies = _policies(ctx)
        if not policies:
            return []
        found = []
        for call in ctx.result.tool_calls:
            why = self.why_forbidden(call.name, policies)
            if why is not None:
                found.append((call.name, why))
        return found

    @staticmethod
    def _flag(ctx: RequestContext, found: list[tuple[str, str]]) -> None:
        for name, why in found:
            rule = f"tool_permission:{name[:_MAX_NAME]}"
            ctx.verdicts.append(
                {"rule": rule, "rules": [rule], "location": "response", "action": "flag", "score": 1.0,
                 "flagged": True}
            )
            ctx.event("tool_permission.flagged", tool=name[:_MAX_NAME], reason=why)


def _is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")

