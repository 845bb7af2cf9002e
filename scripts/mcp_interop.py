"""The Python MCP SDK's client against countersign's gateway (see
scripts/mcp-interop): list, read, a gated write approved by a reviewer
through the web door, the outcome, and the upstream called exactly once.
Prints one line per check and `N passed, 0 failed`; exits non-zero on the
first failure."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

passed = 0


def check(cond: bool, what: str, detail: object = "") -> None:
    global passed
    if not cond:
        print(f"FAILED: {what} {detail}", flush=True)
        print(f"{passed} passed, 1 failed")
        sys.exit(1)
    passed += 1
    print(f"ok: {what}", flush=True)


async def approve_as_reviewer(base: str, user: str, password: str, proposal_id: str) -> None:
    """Sign in, read the review, approve: what a person's browser sends."""
    async with httpx2.AsyncClient(base_url=base, follow_redirects=False, timeout=30) as web:
        page = (await web.get("/login")).text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        check(csrf is not None, "the sign-in page carries a CSRF token")
        r = await web.post(
            "/api/login",
            data={"username": user, "password": password, "csrf": csrf.group(1), "next": "/"},
            headers={"origin": base},
        )
        check(r.status_code in (200, 302, 303), "the reviewer signs in", r.status_code)
        session_csrf = (await web.get("/api/session")).json()["csrf"]
        review = (await web.get("/api/review", params={"id": proposal_id})).json()
        check(review.get("upstream_call", {}).get("via_mcp") is True, "the review marks the gateway call", review.get("upstream_call"))
        r = await web.post(
            "/api/decide",
            data={
                "id": proposal_id, "verdict": "approve", "comment": "checked the ticket",
                "content_hash": review["content_hash"], "view_ms": "4000", "csrf": session_csrf,
            },
            headers={"origin": base, "x-csrf-token": session_csrf},
        )
        check(r.status_code == 200, "the reviewer approves", (r.status_code, r.text[:200]))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--service-key", required=True)
    ap.add_argument("--reviewer", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--calls-log", required=True)
    ap.add_argument("--secret", required=True, help="the upstream credential, which must reach no agent")
    a = ap.parse_args()

    async with httpx2.AsyncClient(timeout=30) as api:
        r = await api.post(
            f"{a.url}/api/v1/runs",
            headers={"authorization": f"Bearer {a.service_key}"},
            json={"route": "support/mcp", "ttl_seconds": 600},
        )
        check(r.status_code == 201, "a run is minted", r.text)
        token = r.json()["token"]

    async with httpx2.AsyncClient(headers={"Authorization": "Bearer not-a-token"}) as bad:
        r = await bad.post(f"{a.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
                           headers={"accept": "application/json, text/event-stream"})
        check(r.status_code == 401, "a bad token is 401 before any message", r.status_code)

    progress: list[str] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(120)) as http:
        async with streamable_http_client(f"{a.url}/mcp", http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as s:
                init = await s.initialize()
                check(init.server_info.name == "countersign", "the server is countersign", init.server_info)

                tools = {t.name: t for t in (await s.list_tools()).tools}
                check(sorted(tools) == ["ticket.close", "ticket.search"], "tools/list shows the route's tools", sorted(tools))
                close = tools["ticket.close"]
                check((close.description or "").startswith("Close a ticket"), "the upstream's description comes first", close.description)
                check((close.description or "").endswith("Needs approval by one person."), "the gate's note ends it", close.description)
                schema = close.input_schema
                check(schema.get("additionalProperties") is False and schema.get("required") == ["ticket_id"],
                      "the schema comes from the policy", schema)
                check(a.secret not in json.dumps([t.model_dump() for t in tools.values()]), "the upstream credential is not listed")

                r = await s.call_tool("ticket.search", {"query": "printer"})
                check(not r.is_error and "T-1001" in r.content[0].text, "a read passes through", r)

                denied = await s.call_tool("ticket.delete", {"ticket_id": "T-1"})
                check(denied.is_error and denied.structured_content["code"] == "tool_not_allowed", "an unlisted tool is refused", denied)
                bad = await s.call_tool("ticket.close", {"ticket_id": "1001"})
                check(bad.is_error and bad.structured_content["code"] == "invalid_args", "invalid args are refused", bad)

                call = asyncio.create_task(
                    s.call_tool("ticket.close", {"ticket_id": "T-1002", "reason": "fixed"}, progress_callback=on_progress)
                )
                deadline = time.monotonic() + 30
                while not progress and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                check(progress and progress[0] == "waiting for approval (0 of 1)", "progress says it waits", progress)
                proposal_id = await find_in_queue(a.url, a.reviewer, a.password)
                await approve_as_reviewer(a.url, a.reviewer, a.password, proposal_id)
                result = await asyncio.wait_for(call, 60)
                check(not result.is_error, "the approved call returns the upstream's result", result)
                check(result.content[0].text.startswith("closed T-1002"), "with the upstream's own text", result.content)

                again = await s.call_tool("ticket.close", {"ticket_id": "T-1002", "reason": "fixed"})
                check(again.content[0].text == result.content[0].text, "the same call again returns the outcome", again)

    calls = [json.loads(line) for line in open(a.calls_log, encoding="utf-8")]
    closes = [c for c in calls if c["tool"] == "close_ticket"]
    check(len(closes) == 1, "the upstream closed the ticket exactly once", closes)
    check(str(closes[0]["meta"].get("countersign/execution_key", "")).startswith("exk_"), "with the execution key in _meta", closes[0])
    print(f"{passed} passed, 0 failed")


async def find_in_queue(base: str, user: str, password: str) -> str:
    async with httpx2.AsyncClient(base_url=base, follow_redirects=False, timeout=30) as web:
        page = (await web.get("/login")).text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        await web.post("/api/login", data={"username": user, "password": password, "csrf": csrf, "next": "/"},
                       headers={"origin": base})
        queue = (await web.get("/api/queue")).json()
        rows = queue["rows"]
        check(len(rows) == 1, "the reviewer's queue holds the gated call", queue)
        return rows[0]["id"]


if __name__ == "__main__":
    asyncio.run(main())
