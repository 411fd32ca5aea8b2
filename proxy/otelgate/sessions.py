"""Which agent run (session) a request belongs to.

In order: the ``x-otelgate-session`` header; a run id the caller put in the body (Claude Code's per-run
``session_id`` inside Anthropic ``metadata.user_id``; an OpenAI ``conversation``); the session of the response a
Responses request continues (``previous_response_id``); else a hash of the caller's credential, the end user the
body names (Anthropic ``metadata.user_id``; OpenAI ``user``, ``safety_identifier``, ``prompt_cache_key``) and the
conversation's opening (system prompt and first user message).

An end-user id is not a session of its own: an application passes the same one on every run it makes for that
user (both providers ask for it, for abuse monitoring), so every run of a user's day would share one session cap.
It does keep apart the runs of two users that open with the same words.

A request that continues a stored response sends only the new items: no user message, so nothing to hash, and
each turn would have been a session of its own, out of reach of session caps. Which session each response
belonged to is remembered here, per process, and written to the shared store (Redis or SQLite, the budgets'
store) as the answer goes out, so that a continuation reaching another worker or replica finds it there
(docs/scaling.md). The store is asked only when this process does not know the answer, within the store's
timeout; when it is down or slow the continuation falls back to the hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from typing import Protocol

from otelgate.context import RequestContext
from otelgate.providers import Provider

log = logging.getLogger(__name__)

SESSION_HEADER = "x-otelgate-session"
MAX_ID_CHARS = 200
# An agent continues its latest answer, so only the newest matter: one per run in flight. At most ~7 MB (ids of
# ~50 characters, session ids of up to 200).
REMEMBERED_RESPONSES = 16_384
NOTE_PREFIX = "response-session:"
DERIVED_PREFIX = "conv-"  # the ids this module derives from a conversation's opening


def is_derived(session_id: str, source: str | None) -> bool:
    """Whether the gateway made this session id up (a hash), directly or through the answer a request continues,
    rather than the caller naming its run."""
    return source == "hash" or (source == "previous_response" and session_id.startswith(DERIVED_PREFIX))


class SharedNotes(Protocol):
    """Notes every replica can read (``Ledger.remember`` / ``Ledger.recall``)."""

    async def remember(self, name: str, value: str, ttl_seconds: float) -> None: ...

    async def recall(self, name: str) -> str | None: ...


class Sessions:
    def __init__(self, remembered: int = REMEMBERED_RESPONSES, shared: SharedNotes | None = None,
                 ttl_seconds: float = 86400.0) -> None:
        self._by_response: OrderedDict[str, str] = OrderedDict()
        self._remembered = remembered
        self.shared = shared
        self.ttl_seconds = ttl_seconds  # a continuation later than a session's TTL starts a new session anyway
        self._writes: set[asyncio.Task[None]] = set()

    async def resolve(self, ctx: RequestContext, provider: Provider) -> None:
        """Set ctx.session_id and ctx.session_source (header | metadata | previous_response | hash), or leave
        them None when nothing identifies a run."""
        assert ctx.json is not None
        header = ctx.request.headers.get(SESSION_HEADER)
        if header:
            ctx.session_id, ctx.session_source = header[:MAX_ID_CHARS], "header"
            return
        hint = provider.session_hint(ctx.json)
        if hint:
            ctx.session_id, ctx.session_source = hint[:MAX_ID_CHARS], "metadata"
            return
        previous = provider.continues(ctx.json)
        if previous is not None:
            session = self._by_response.get(previous)
            if session is None and self.shared is not None:
                try:
                    session = await self.shared.recall(NOTE_PREFIX + previous)
                except Exception as exc:  # the note only helps: without it the request goes on, as below
                    log.warning("could not read the session of %s from the store: %s", previous[:64], exc)
            if session is not None:
                ctx.session_id, ctx.session_source = session, "previous_response"
                return
        seed = provider.conversation_seed(ctx.json)
        if seed:
            # The first messages of a conversation stay the same on every turn of an agent loop. The caller's
            # credential is part of the hash: two keys whose agents open with the same messages (one product,
            # many customers) run different sessions, and one must not use up the other's session caps. (A
            # one-way hash, truncated: the id reveals nothing of the key. BLAKE2b: CPython's own, without the
            # per-call setup of OpenSSL's SHA-256, and only 8 bytes are kept anyway.)
            headers = ctx.request.headers
            credential = next((headers[h] for h in provider.auth_headers if h in headers), "")
            end_user = provider.end_user(ctx.json) or ""
            key = f"{credential}\x00{end_user}\x00{seed}"
            digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8)
            ctx.session_id, ctx.session_source = DERIVED_PREFIX + digest.hexdigest(), "hash"

    def remember(self, ctx: RequestContext) -> None:
        """After a response: a later request continuing it (by its id) belongs to this request's session."""
        response_id = ctx.result.response_id
        if response_id is None or ctx.session_id is None or ctx.json is None:
            return
        if not ctx.provider.continuable(ctx.route, ctx.json):
            return
        self._by_response[response_id] = ctx.session_id
        if len(self._by_response) > self._remembered:
            self._by_response.popitem(last=False)
        if self.shared is not None:  # for the other processes; the answer does not wait for it
            task = asyncio.get_running_loop().create_task(self._share(response_id, ctx.session_id))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def close(self) -> None:
        """Wait for the notes still on their way to the store (each bounded by the store's timeout)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def _share(self, response_id: str, session: str) -> None:
        assert self.shared is not None
        try:
            await self.shared.remember(NOTE_PREFIX + response_id, session, self.ttl_seconds)
        except Exception as exc:  # a closed store at shutdown: the note only helps other replicas
            log.debug("could not share the session of %s: %s", response_id, exc)
