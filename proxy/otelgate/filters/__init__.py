"""The stages of the chain, one concern each (mitmproxy-style addons over one RequestContext).

A filter has a `name` and may define `request(ctx)` (before the upstream call; raise GatewayError to refuse),
`response(ctx, body)` (a complete non-streaming answer, before the agent sees it) and `done(ctx)` (exactly once
at the end, for every filter whose `request` ran). `observer = True` filters run before ingress parsing.
"""
