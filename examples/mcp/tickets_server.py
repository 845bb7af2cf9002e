"""A small upstream MCP server to put countersign in front of: a ticket desk
with one read tool (search_tickets) and one write tool (close_ticket), over
Streamable HTTP, built with the official Python SDK (`mcp` 2.x, MCPServer).

It insists on `Authorization: Bearer $TICKETS_TOKEN`: the credential that
countersign holds and agents never see. countersign passes each execution's
key in `_meta["countersign/execution_key"]`; the server keeps the keys it has
acted on, so a redelivered execution never closes a ticket twice.

    TICKETS_TOKEN=dev-tickets-token python tickets_server.py --port 9100

Set TICKETS_CALLS_LOG=FILE to append one JSON line per tool call (the
interoperability test counts them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("tickets")

TICKETS: dict[str, dict[str, str]] = {
    "T-1001": {"title": "Printer on fire", "status": "open"},
    "T-1002": {"title": "Password reset loops", "status": "open"},
    "T-1003": {"title": "VPN drops every hour", "status": "open"},
}
# Execution keys already acted on, with what was answered.
DONE: dict[str, str] = {}


def _log_call(tool: str, args: dict, meta: dict | None) -> None:
    path = os.environ.get("TICKETS_CALLS_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"tool": tool, "args": args, "meta": meta or {}}) + "\n")


def _meta(ctx: Context | None) -> dict:
    meta = getattr(getattr(ctx, "request_context", None), "meta", None) if ctx is not None else None
    if meta is None:
        return {}
    if isinstance(meta, dict):
        return meta
    dump = getattr(meta, "model_dump", None)
    return dump(by_alias=True) if dump else {}


@server.tool()
def search_tickets(query: str, ctx: Context) -> str:
    """Search open and closed tickets by words in their title."""
    _log_call("search_tickets", {"query": query}, _meta(ctx))
    words = query.lower().split()
    hits = [f"{tid}: {t['title']} ({t['status']})" for tid, t in TICKETS.items() if all(w in t["title"].lower() for w in words)]
    return "\n".join(hits) if hits else f"no ticket matches {query!r}"


@server.tool()
def close_ticket(ticket_id: str, ctx: Context, reason: str = "") -> str:
    """Close a ticket, with the reason shown to the customer."""
    meta = _meta(ctx)
    _log_call("close_ticket", {"ticket_id": ticket_id, "reason": reason}, meta)
    key = meta.get("countersign/execution_key")
    if key and key in DONE:
        return DONE[key]
    ticket = TICKETS.get(ticket_id)
    if ticket is None:
        raise ValueError(f"no ticket {ticket_id}")
    ticket["status"] = "closed"
    answer = f"closed {ticket_id}: {ticket['title']}" + (f" ({reason})" if reason else "")
    if key:
        DONE[key] = answer
    return answer


class RequireBearer:
    """Refuse any request without the expected bearer token (ASGI)."""

    def __init__(self, app, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization") != self.expected:
                await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"missing or wrong bearer token"})
                return
        await self.app(scope, receive, send)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    token = os.environ.get("TICKETS_TOKEN")
    if not token:
        print("set TICKETS_TOKEN: the bearer token this server insists on", file=sys.stderr)
        return 2
    app = RequireBearer(server.streamable_http_app(host=args.host), token)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
