"""Prompt-injection screening and outbound secret hygiene for generating requests.

What is scanned (``screening.scope``):

- ``new`` (default): the texts after the conversation's last assistant turn — the new user message and the tool
  results it brings — plus system / instructions / documents when listed in ``screening.scan``. An agent resends
  the whole conversation every turn; rescanning it would cost CPU per turn that grows with the conversation and
  would count (flag mode) the same detection again on every turn. An older text was scanned when it was new: in
  block mode it never got past the gateway, in flag mode it was recorded once. What this misses: history the
  gateway never saw as new (a conversation started elsewhere, or a client that edits earlier turns).
- ``all``: every text of the configured locations, every turn (verdicts are recorded every turn too).

Redaction is the exception to ``new``: the agent keeps its own unredacted copy and resends it next turn, so in
redact mode (injection or secrets) older texts are redacted again, silently (their verdict was recorded when they
were new). A bounded cache of verdicts by text hash keeps those rescans to a hash lookup.

Long tool results in block mode (``screening.redact_long_tool_results``, on by default): a flagged tool result or
document longer than one stretch of the engine (96 words: a file, a web page) is redacted — its flagged stretches
replaced — rather than the request refused. A planted instruction is removed either way; refusing would stop the
agent on every false positive in the files it reads, and the longer the text, the likelier one is. Older such
texts are redacted again every turn, like redact mode's (the redacted text is cached by text hash too).

Secrets are looked for in every location (user, tool results, system, documents), whatever ``scan`` says: a key
pasted in a system prompt leaks just the same.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, TypeVar

from otelgate.errors import GatewayError
from otelgate.providers.base import json_name_in
from otelgate.screening import REDACTION, Screener, Verdict, find_secrets, redact_secrets
from otelgate.screening.engine import is_long

if TYPE_CHECKING:
    from otelgate.config import Settings
    from otelgate.context import RequestContext
    from otelgate.providers.base import TextRef

_ALL_LOCATIONS = frozenset({"user", "tool_result", "system", "documents"})
_READ_LOCATIONS = frozenset({"tool_result", "documents"})  # what the agent read, not what someone wrote to it
# Tells the agent's developer that what the model saw differs from what the agent sent: the locations whose text
# was redacted this turn (suspected injection or credentials), e.g. "tool_result". Never the text or the rule.
REDACTED_HEADER = "x-otelgate-redacted"
_CACHE_SIZE = 8192
_T = TypeVar("_T")
# The caches' key for a text. With hash randomisation (the default) Python's own str hash is SipHash under a
# per-process secret key: nobody outside can make a text collide with one already judged, and it costs a
# quarter of a blake2b digest and no UTF-8 copy (19 vs 74 us for the 58 KB of an agent turn's texts). When
# PYTHONHASHSEED pins that key, it is no secret, and a keyed blake2b digest takes over.
_SECRET_KEY = os.urandom(16)
_RANDOMISED = os.environ.get("PYTHONHASHSEED", "random") == "random"


def _text_key(text: str) -> int | bytes:
    if _RANDOMISED:
        return hash(text)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16, key=_SECRET_KEY).digest()


_Key = int | bytes | tuple[str, int | bytes]  # a text's key, or (location, key) where verdicts depend on it


def _cached(cache: OrderedDict[_Key, _T], digest: _Key) -> _T | None:
    found = cache.get(digest)
    if found is not None:
        try:
            cache.move_to_end(digest)
        except KeyError:  # evicted meanwhile by a scan running in a worker thread
            pass
    return found


def _remember(cache: OrderedDict[_Key, _T], digest: _Key, value: _T) -> _T:
    cache[digest] = value
    if len(cache) > _CACHE_SIZE:
        try:
            cache.popitem(last=False)
        except KeyError:  # emptied meanwhile by another thread
            pass
    return value
# Above this many characters in one request the scan runs in a worker thread, so one huge request does not stall
# every other connection on the event loop (the screener is immutable and thread-safe).
_THREAD_CHARS = 64 * 1024
# Items of a conversation that the model produced; everything after the last of them is new this turn.
_MODEL_ROLES = frozenset({"assistant"})
_MODEL_ITEM_TYPES = frozenset({"function_call", "reasoning", "web_search_call", "file_search_call", "computer_call"})


def new_part(body: dict[str, Any]) -> dict[str, Any]:
    """A shallow view of ``body`` holding only this turn's new conversation items (and the top-level system
    fields). Its items are the body's own dicts, so a TextRef found in it rewrites the real body."""
    view = {key: body[key] for key in ("system", "instructions") if key in body}
    for field in ("messages", "input"):
        items = body.get(field)
        if isinstance(items, list):
            start = 0
            for index, item in enumerate(items):
                # role / type may be any JSON value in a body: only a string can name a model turn.
                if isinstance(item, dict) and (
                    json_name_in(item.get("role"), _MODEL_ROLES) or json_name_in(item.get("type"), _MODEL_ITEM_TYPES)
                ):
                    start = index + 1
            tail = items[start:]
            if field == "messages":
                # Chat Completions keeps its system/developer messages inside `messages`.
                head = [m for m in items[:start] if isinstance(m, dict) and m.get("role") in ("system", "developer")]
                tail = head + tail
            view[field] = tail
        elif field in body:
            view[field] = body[field]
    return view


class _Finding:
    """One text to judge: whether to screen it for injection and/or secrets, and what was found."""

    __slots__ = ("inject", "new", "ref", "secret", "secrets", "verdict")

    def __init__(self, ref: TextRef, new: bool, inject: bool, secret: bool) -> None:
        self.ref = ref
        self.new = new
        self.inject = inject
        self.secret = secret
        self.verdict: Verdict | None = None
        self.secrets: list[str] = []


class ScreeningFilter:
    name = "screening"

    def __init__(self, settings: Settings) -> None:
        self.config = settings.screening
        self.locations = frozenset(self.config.scan)
        modes = {self.config.mode, *(key.screening for key in settings.keys if key.screening)}
        # Built once: loading packs and the classifier takes tens of milliseconds.
        self.screener: Screener | None = (
            Screener.from_packs(self.config.packs, threshold=self.config.threshold) if modes - {"off"} else None
        )
        # Verdicts and redactions by (location, text key): a rule may count in one location and not another.
        self._cache: OrderedDict[_Key, Verdict] = OrderedDict()
        self._secret_kinds: OrderedDict[_Key, tuple[str, ...]] = OrderedDict()  # secret kinds by text key
        self._redacted: OrderedDict[_Key, str] = OrderedDict()
        self.redact_long = self.config.redact_long_tool_results

    def mode_for(self, ctx: RequestContext) -> str:
        principal = ctx.principal
        if principal is not None and principal.key is not None and principal.key.screening is not None:
            return principal.key.screening
        return self.config.mode

    async def request(self, ctx: RequestContext) -> None:
        if not ctx.route.generates or ctx.json is None:
            return
        mode = self.mode_for(ctx) if self.screener is not None else "off"
        secrets = self.config.secrets
        if mode == "off" and secrets == "off":
            return
        findings = self._collect(ctx, mode, secrets)
        if sum(len(f.ref.text) for f in findings) > _THREAD_CHARS:
            await asyncio.to_thread(self._judge, findings)
        else:
            self._judge(findings)
        self._act(ctx, findings, mode, secrets)

    def _collect(self, ctx: RequestContext, mode: str, secrets: str) -> list[_Finding]:
        assert ctx.json is not None
        provider = ctx.provider
        body = ctx.json
        whole = self.config.scope == "all"
        inject_locations = self.locations if mode != "off" else frozenset()
        secret_locations = _ALL_LOCATIONS if secrets != "off" else frozenset()
        wanted = inject_locations | secret_locations
        fresh = [] if whole else list(provider.texts(new_part(body), wanted))
        fresh_ids = {(id(ref.container), ref.key) for ref in fresh}
        redacts_read = mode == "block" and self.redact_long and bool(inject_locations & _READ_LOCATIONS)
        if whole or mode == "redact" or secrets == "redact" or redacts_read:
            refs = list(provider.texts(body, wanted))
        else:
            refs = fresh
        findings = []
        for ref in refs:
            is_new = whole or (id(ref.container), ref.key) in fresh_ids
            # An old text is only looked at again to redact it again (see the module docstring).
            # An older tool result matters in block mode only if long: a flagged short one never got through.
            inject = ref.location in inject_locations and (
                is_new or mode == "redact"
                or (redacts_read and ref.location in _READ_LOCATIONS and is_long(ref.text)))
            secret = ref.location in secret_locations and (is_new or secrets == "redact")
            if inject or secret:
                findings.append(_Finding(ref, is_new, inject, secret))
        return findings

    def _judge(self, findings: list[_Finding]) -> None:
        for finding in findings:
            text = finding.ref.text
            if not text:
                continue
            digest = _text_key(text)
            if finding.secret:
                # Redaction rescans an agent's whole history every turn: remember which texts hold secrets (and
                # which kinds) by hash, so an unchanged text costs a hash, not a scan.
                kinds = _cached(self._secret_kinds, digest)
                if kinds is None:
                    kinds = _remember(self._secret_kinds, digest, tuple(m.kind for m in find_secrets(text)))
                finding.secrets = list(kinds)
            if finding.inject and text != REDACTION:
                assert self.screener is not None
                location = finding.ref.location
                verdict = _cached(self._cache, (location, digest))
                if verdict is None:
                    verdict = _remember(self._cache, (location, digest), self.screener.scan(text, location))
                finding.verdict = verdict

    def _act(self, ctx: RequestContext, findings: list[_Finding], mode: str, secrets: str) -> None:
        # Record first, refuse after: the verdicts of a blocked request are what telemetry must show.
        block: GatewayError | None = None
        redacted: set[str] = set()
        for finding in findings:
            ref = finding.ref
            location = ref.location
            if finding.secrets:
                kinds = sorted(set(finding.secrets))
                if finding.new:
                    self._record(ctx, [f"secret:{kind}" for kind in kinds], location, secrets, 1.0, ref)
                if secrets == "block" and block is None:
                    block = GatewayError(
                        "permission",
                        f"request blocked: it carries a credential ({kinds[0]}, location {location}); "
                        "remove it and resend",
                        reason="secret",
                    )
                elif secrets == "redact":
                    ref.replace(redact_secrets(ref.text))
                    ctx.body_modified = True
                    redacted.add(location)
            verdict = finding.verdict
            if verdict is None or not verdict.flagged:
                continue
            if mode == "block" and self.redact_long and location in _READ_LOCATIONS and is_long(ref.text):
                if finding.new:
                    self._record(ctx, list(verdict.rules), location, "redact", verdict.score, ref)
                ref.replace(self._redact_long(ref.text, location))
                ctx.body_modified = True
                redacted.add(location)
                continue
            if finding.new:
                self._record(ctx, list(verdict.rules), location, mode, verdict.score, ref)
            if mode == "block":
                # An older text is only here to be redacted again if long: it was judged when it was new.
                if finding.new and block is None:
                    block = GatewayError(
                        "permission",
                        f"request blocked by prompt-injection screening (rule {verdict.rules[0]}, location "
                        f"{location})",
                        reason="screening",
                    )
            elif mode == "redact":
                assert self.screener is not None
                ref.replace(self.screener.redact(ref.text, location))
                ctx.body_modified = True
                redacted.add(location)
        if block is not None:
            raise block
        if redacted:
            ctx.response_headers[REDACTED_HEADER] = ",".join(sorted(redacted))

    def _redact_long(self, text: str, location: str) -> str:
        assert self.screener is not None
        key = (location, _text_key(text))
        redacted = _cached(self._redacted, key)
        return redacted if redacted is not None else _remember(self._redacted, key,
                                                               self.screener.redact(text, location))

    @staticmethod
    def _record(ctx: RequestContext, rules: list[str], location: str, action: str, score: float, ref: TextRef) -> None:
        verdict: dict[str, Any] = {
            "rule": rules[0],
            "rules": rules,
            "location": location,
            "action": action,
            "score": round(score, 3),
            "flagged": True,
        }
        ctx.verdicts.append(verdict)
        attributes: dict[str, Any] = {key: value for key, value in verdict.items() if key != "flagged"}
        if ref.tool_call_id:
            attributes["tool_call_id"] = str(ref.tool_call_id)
        ctx.event("screening.verdict", **attributes)
