"""An in-memory stand-in for the countersign API, served through
``httpx.MockTransport``: enough of docs/api.md to drive the clients, the gate and
the executor in unit tests, with knobs to inject faults and to tamper with
receipts. Reviewer actions are plain method calls (``approve``, ``reject``)."""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from countersign import AsyncClient, Client, RetryPolicy

ENV = "prod"
SERVICE_KEY = "csk_unit_service"
EXECUTOR_KEY = "cek_unit_executor"
FAST_RETRY = RetryPolicy(max_retries=3, initial_backoff=0.001, max_backoff=0.004)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def now_iso(offset: float = 0.0) -> str:
    t = datetime.fromtimestamp(time.time() + offset, tz=timezone.utc)
    return t.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def error(status: int, code: str, message: str, **details: Any) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"code": code, "message": message, "details": details}}
    )


@dataclass
class SigningKey:
    kid: str
    private: Ed25519PrivateKey

    def jwk(self) -> dict[str, str]:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        raw = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "kid": self.kid, "x": b64url(raw), "use": "sig"}


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    respond: Callable[[httpx.Request], httpx.Response]
    times: int


@dataclass
class Seen:
    """One request as the fake received it."""

    method: str
    path: str
    raw_path: str
    params: dict[str, str]
    headers: httpx.Headers
    body: Any


@dataclass
class FakeServer:
    require_approval: tuple[str, ...] = ("ticket.close", "email.send", "refund.create")
    auto_approve: tuple[str, ...] = ("email.draft",)
    read_tools: tuple[str, ...] = ("kb.search", "tickets.get")
    executor_preview: tuple[str, ...] = ()
    executor_tools: tuple[str, ...] = ("ticket.close", "email.send", "refund.create", "email.draft")
    tenant: str = "acme"
    env: str = ENV
    receipts: bool = True
    receipt_ttl: int = 600
    max_attempts: int = 3
    base_url: str = "http://countersign.test"
    #: How long each long poll takes here (the real one blocks up to its timeout).
    wait_delay: float = 0.02

    proposals: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    #: Called with the proposal at every long poll (to make things happen).
    on_wait: Callable[[dict[str, Any]], None] | None = None
    #: Rewrites a receipt before it is handed out (tests of tampering).
    tamper: Callable[[str], str] | None = None
    #: Args the queue hands out instead of the proposal's (receipt args win).
    queue_args: dict[str, Any] | None = None
    #: Jobs whose heartbeats answer cancel_requested / are refused.
    cancel_requested: set[str] = field(default_factory=set)
    lost_leases: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.keys = [SigningKey("key-1", Ed25519PrivateKey.generate())]
        self.published = list(self.keys)
        self._ids = itertools.count(1)
        self._runs: dict[str, str] = {}
        self._by_key: dict[str, str] = {}
        self._lock = threading.RLock()

    # -------------------------------------------------------------- clients

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def client(self, credential: str | None = None, **kw: Any) -> Client:
        kw.setdefault("retry", FAST_RETRY)
        return Client(self.base_url, credential, transport=self.transport(), **kw)

    def async_client(self, credential: str | None = None, **kw: Any) -> AsyncClient:
        kw.setdefault("retry", FAST_RETRY)
        return AsyncClient(self.base_url, credential, transport=self.transport(), **kw)

    def run_token(self, route: str = "support/send") -> str:
        with self._lock:
            token = f"rt_{next(self._ids)}"
            self._runs[token] = f"run_{next(self._ids)}"
            return token

    def fail(
        self,
        method: str,
        path: str,
        respond: Callable[[httpx.Request], httpx.Response],
        times: int = 1,
    ) -> None:
        """The next ``times`` requests matching answer ``respond(request)``
        (which may raise an httpx exception)."""
        self.faults.append(Fault(method, re.compile(path), respond, times))

    def calls(self, method: str, path_re: str) -> list[Seen]:
        rx = re.compile(path_re)
        return [s for s in self.seen if s.method == method and rx.fullmatch(s.path)]

    # --------------------------------------------------------- reviewer side

    def approve(self, pid: str, by: str = "alice") -> None:
        with self._lock:
            p = self.proposals[pid]
            assert p["status"] == "pending", p["status"]
            p["decisions"].append(self._decision(by, "approve", ""))
            p["approvals"].append({"by": by, "at": now_iso()})
            self._release(p)

    def reject(self, pid: str, by: str = "sam", comment: str = "wrong customer") -> None:
        with self._lock:
            p = self.proposals[pid]
            p["decisions"].append(self._decision(by, "reject", comment))
            p["status"] = "rejected"

    def set_status(self, pid: str, status: str) -> None:
        with self._lock:
            self.proposals[pid]["status"] = status

    def rotate_key(self) -> SigningKey:
        key = SigningKey(f"key-{len(self.keys) + 1}", Ed25519PrivateKey.generate())
        self.keys.append(key)
        self.published.append(key)
        return key

    def _decision(self, by: str, verdict: str, comment: str) -> dict[str, Any]:
        return {
            "by": by,
            "verdict": verdict,
            "comment": comment,
            "at": now_iso(),
            "break_glass": False,
        }

    def _new_job(self, p: dict[str, Any], kind: str) -> dict[str, Any]:
        job = {
            "job_id": f"job_{next(self._ids)}",
            "proposal_id": p["id"],
            "tool": p["tool"],
            "kind": kind,
            "state": "queued",
            "attempt": 0,
            "lease_id": None,
            "execution_key": f"exk_{p['id']}",
            "completion": None,
            "not_before": 0.0,
            "execute_by": None,
        }
        self.jobs[job["job_id"]] = job
        return job

    def _release(self, p: dict[str, Any]) -> None:
        p["status"] = "queued"
        job = self._new_job(p, "execute")
        p["execution"] = {"status": "queued", "attempts": 0, "result": None, "finished_at": None}
        p["job_id"] = job["job_id"]

    def receipt(self, job: dict[str, Any]) -> str:
        p = self.proposals[job["proposal_id"]]
        now = int(time.time())
        claims = {
            "iss": self.base_url,
            "jti": job["job_id"],
            "sub": p["id"],
            "tenant": self.tenant,
            "env": self.env,
            "tool": p["tool"],
            "args": p["args"],
            "execution_key": job["execution_key"],
            "approvals": [{"user": a["by"], "at": a["at"]} for a in p["approvals"]],
            "auto_approved": not p["approvals"],
            "break_glass": False,
            "preview_sha256": None,
            "preview_state": p.get("preview_state"),
            "policy_sha256": "0" * 64,
            "iat": now,
            "exp": job["execute_by"],
        }
        key = self.keys[-1]
        token = jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.kid})
        return self.tamper(token) if self.tamper else token

    # ------------------------------------------------------------- the API

    def handle(self, request: httpx.Request) -> httpx.Response:
        body: Any = None
        if request.content:
            try:
                body = json.loads(request.content)
            except ValueError:
                return error(400, "bad_request", "malformed JSON")
        path = request.url.path
        with self._lock:
            self.seen.append(
                Seen(
                    request.method,
                    path,
                    request.url.raw_path.decode(),
                    dict(request.url.params),
                    request.headers,
                    body,
                )
            )
            for fault in self.faults:
                if (
                    fault.times > 0
                    and fault.method == request.method
                    and fault.path.fullmatch(path)
                ):
                    fault.times -= 1
                    return fault.respond(request)
            response = self._route(request, path, body)
        if path.endswith("/wait"):
            # A long poll that answers at once would spin the caller's loop.
            time.sleep(self.wait_delay)
        return response

    def _who(self, request: httpx.Request) -> tuple[str, str] | httpx.Response:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return error(401, "unauthenticated", "missing Authorization: Bearer header")
        token = auth[len("Bearer ") :]
        if token == SERVICE_KEY:
            return "service", token
        if token == EXECUTOR_KEY:
            return "executor", token
        if token in self._runs:
            return "run", token
        return error(401, "unauthenticated", "unknown credential")

    def _route(self, request: httpx.Request, path: str, body: Any) -> httpx.Response:
        m = request.method
        if m == "GET" and path == "/.well-known/jwks.json":
            if not self.receipts:
                return error(404, "not_found", "no such endpoint")
            return httpx.Response(200, json={"keys": [k.jwk() for k in self.published]})
        who = self._who(request)
        if isinstance(who, httpx.Response):
            return who
        kind, token = who
        routes: list[tuple[str, str, str, Callable[..., httpx.Response]]] = [
            ("POST", r"/api/v1/runs", "service", self._mint),
            ("POST", r"/api/v1/check", "run", self._check),
            ("POST", r"/api/v1/proposals", "run", self._propose),
            ("GET", r"/api/v1/proposals/(?P<id>[^/]+)", "run", self._get),
            ("GET", r"/api/v1/proposals/(?P<id>[^/]+)/wait", "run", self._wait),
            ("POST", r"/api/v1/proposals/(?P<id>[^/]+)/cancel", "run", self._cancel),
            ("POST", r"/api/v1/jobs/claim", "executor", self._claim),
            ("POST", r"/api/v1/jobs/(?P<id>[^/]+)/heartbeat", "executor", self._heartbeat),
            ("POST", r"/api/v1/jobs/(?P<id>[^/]+)/complete", "executor", self._complete),
        ]
        for method, pattern, needs, fn in routes:
            match = re.fullmatch(pattern, path)
            if method == m and match:
                if kind != needs:
                    return error(403, "forbidden", f"a {kind} credential cannot do this")
                return fn(request=request, body=body, token=token, **match.groupdict())
        return error(404, "not_found", "no such endpoint")

    def _mint(self, body: Any, **_: Any) -> httpx.Response:
        route = body.get("route")
        if route not in ("support/send", "support/draft", "research", "ops/triage"):
            return error(422, "unknown_route", f"route {route!r} is not in the policy")
        token = self.run_token(route)
        return httpx.Response(
            201,
            json={
                "run_id": self._runs[token],
                "token": token,
                "tenant": self.tenant,
                "env": self.env,
                "route": route,
                "expires_at": now_iso(body.get("ttl_seconds") or 300),
                "allow_tools": [*self.read_tools, *self.require_approval],
                "require_approval": list(self.require_approval),
                "budgets": {"steps": 25, "seconds": 300, "usd": 1.0},
            },
        )

    def _check(self, body: Any, **_: Any) -> httpx.Response:
        tool = body.get("tool")
        if tool == "db.write":
            return error(403, "tool_denied", "denied", tool=tool, route="support/send")
        if tool in self.read_tools:
            return httpx.Response(200, json={"tool": tool, "decision": "allow"})
        if tool in self.require_approval:
            return httpx.Response(200, json={"tool": tool, "decision": "require_approval"})
        return error(403, "tool_not_allowed", "not allowed", tool=tool, route="support/send")

    def _view(self, p: dict[str, Any]) -> dict[str, Any]:
        hidden = {"args", "job_id", "preview_state", "token", "readers"}
        return {k: v for k, v in p.items() if k not in hidden}

    def _propose(self, body: Any, token: str, **_: Any) -> httpx.Response:
        tool, args, key = body.get("tool"), body.get("args"), body.get("idempotency_key")
        known = set(self.require_approval) | set(self.auto_approve) | set(self.executor_preview)
        if tool not in known:
            return error(403, "tool_not_allowed", "not allowed", tool=tool, route="support/send")
        if key is None:
            return error(
                422, "invalid_args", "args", tool=tool, fields={"idempotency_key": "is required"}
            )
        if tool in self.executor_preview and body.get("preview") is not None:
            return error(
                422,
                "invalid_args",
                "args",
                tool=tool,
                fields={"preview": "computed by the executor"},
            )
        if key in self._by_key:
            p = self.proposals[self._by_key[key]]
            if p["tool"] != tool or p["args"] != args:
                return error(409, "idempotency_conflict", "conflict", existing_proposal=p["id"])
            # like the server, the replaying run may read and wait on it from now on
            p["readers"].add(token)
            return httpx.Response(200, json=self._view(p), headers={"Idempotent-Replayed": "true"})
        pid = f"prp_{next(self._ids)}"
        p = {
            "id": pid,
            "status": "pending",
            "tool": tool,
            "tenant": self.tenant,
            "env": self.env,
            "route": "support/send",
            "run_id": self._runs[token],
            "approvals_required": 1,
            "approvals": [],
            "created_at": now_iso(),
            "expires_at": now_iso(3600),
            "review_url": f"{self.base_url}/proposals/{pid}",
            "idempotency_key": key,
            "decisions": [],
            "execution": None,
            "args": args,
            "token": token,
            "readers": {token},
        }
        self.proposals[pid] = p
        self._by_key[key] = pid
        if tool in self.auto_approve:
            p["approvals_required"] = 0
            self._release(p)
        elif tool in self.executor_preview:
            p["status"] = "previewing"
            self._new_job(p, "preview")
        return httpx.Response(201, json=self._view(p))

    def _own(self, pid: str, token: str) -> dict[str, Any] | httpx.Response:
        p = self.proposals.get(pid)
        if p is None or token not in p["readers"]:
            return error(404, "not_found", "not found")
        return p

    def _get(self, id: str, token: str, **_: Any) -> httpx.Response:
        p = self._own(id, token)
        return p if isinstance(p, httpx.Response) else httpx.Response(200, json=self._view(p))

    def _wait(self, request: httpx.Request, id: str, token: str, **_: Any) -> httpx.Response:
        p = self._own(id, token)
        if isinstance(p, httpx.Response):
            return p
        seconds = int(request.url.params.get("timeout_seconds", "30"))
        if seconds > 60:
            return error(400, "bad_request", "timeout_seconds must be between 0 and 60")
        if self.on_wait is not None:
            self.on_wait(p)
        return httpx.Response(200, json=self._view(p))

    def _cancel(self, id: str, token: str, **_: Any) -> httpx.Response:
        p = self._own(id, token)
        if isinstance(p, httpx.Response):
            return p
        if p["status"] != "pending":
            return error(409, "invalid_transition", "only a pending proposal can be cancelled")
        p["status"] = "cancelled"
        return httpx.Response(200, json=self._view(p))

    def _claim(self, body: Any, **_: Any) -> httpx.Response:
        allowed = {"tools", "max", "lease_seconds", "wait_seconds", "kinds"}
        if set(body) - allowed:
            return error(400, "bad_request", f"unknown field {sorted(set(body) - allowed)}")
        n = body.get("max", 1)
        if not 1 <= n <= 100:
            return error(400, "bad_request", f"max must be between 1 and 100 (got {n})")
        tools = set(body.get("tools") or self.executor_tools) & set(self.executor_tools)
        kinds = set(body.get("kinds") or ["execute"])
        now = time.time()
        out: list[dict[str, Any]] = []
        for job in self.jobs.values():
            if len(out) >= n:
                break
            if job["state"] != "queued" or job["tool"] not in tools or job["kind"] not in kinds:
                continue
            if job["not_before"] > now:
                continue
            p = self.proposals[job["proposal_id"]]
            job["state"] = "leased"
            job["attempt"] += 1
            # the execute-by deadline, which the receipt's exp states
            job["execute_by"] = int(now) + self.receipt_ttl
            job["lease_id"] = f"lse_{next(self._ids)}"
            if job["kind"] == "execute":
                p["status"] = "running"
                p["execution"] = {
                    "status": "running",
                    "attempts": job["attempt"],
                    "result": None,
                    "finished_at": None,
                }
            out.append(
                {
                    "job_id": job["job_id"],
                    "lease_id": job["lease_id"],
                    "proposal_id": p["id"],
                    "tenant": self.tenant,
                    "env": self.env,
                    "tool": job["tool"],
                    "args": self.queue_args if self.queue_args is not None else p["args"],
                    "idempotency_key": p["idempotency_key"],
                    "attempt": job["attempt"],
                    # like the server: no lease reaches past the execute-by time
                    "lease_expires_at": now_iso(
                        min(body.get("lease_seconds", 60), job["execute_by"] - now)
                    ),
                    "kind": job["kind"],
                    "execution_key": job["execution_key"],
                    "receipt": (
                        self.receipt(job) if self.receipts and job["kind"] == "execute" else None
                    ),
                    "preview_state": p.get("preview_state"),
                }
            )
        return httpx.Response(200, json={"jobs": out})

    def _leased(self, id: str, lease_id: Any) -> dict[str, Any] | httpx.Response:
        job = self.jobs.get(id)
        if job is None:
            return error(404, "not_found", "not found")
        if job["state"] != "leased" or job["lease_id"] != lease_id or id in self.lost_leases:
            return error(409, "invalid_transition", "this lease is no longer held")
        return job

    def _heartbeat(self, id: str, body: Any, **_: Any) -> httpx.Response:
        job = self._leased(id, body.get("lease_id"))
        if isinstance(job, httpx.Response):
            return job
        now = time.time()
        if job["execute_by"] is not None and now + body["lease_seconds"] > job["execute_by"]:
            # the server's words (core/src/service/jobs.rs), which carry no details
            most = max(0, int(job["execute_by"] - now))
            return error(
                409,
                "invalid_transition",
                "a lease cannot outlast the job's execute-by deadline "
                f"({now_iso(job['execute_by'] - now)}): ask for at most {most} s",
            )
        return httpx.Response(
            200,
            json={
                "job_id": id,
                "lease_id": body["lease_id"],
                "lease_expires_at": now_iso(body.get("lease_seconds", 60)),
                "cancel_requested": id in self.cancel_requested,
            },
        )

    def _complete(self, id: str, body: Any, **_: Any) -> httpx.Response:
        job = self.jobs.get(id)
        if job is not None and job["completion"] == body:
            p = self.proposals[job["proposal_id"]]
            return httpx.Response(
                200,
                json={
                    "job_id": id,
                    "state": job["state"],
                    "proposal_status": p["status"],
                    "attempt": job["attempt"],
                    "next_attempt_at": None,
                },
            )
        leased = self._leased(id, body.get("lease_id"))
        if isinstance(leased, httpx.Response):
            return leased
        job = leased
        p = self.proposals[job["proposal_id"]]
        ok = body["status"] == "succeeded"
        job["completion"] = body
        next_at = None
        if job["kind"] == "preview":
            if ok and not isinstance((body.get("preview") or {}).get("state"), str):
                return error(
                    400,
                    "bad_request",
                    "a preview job completes with preview: {before, after, state}",
                )
            if ok:
                preview = body.get("preview") or {}
                p["preview"] = preview
                p["preview_state"] = preview.get("state")
                p["status"] = "pending"
                job["state"] = "succeeded"
            else:
                p["status"] = "failed"
                job["state"] = "failed"
                p["execution"] = {
                    "status": "failed",
                    "attempts": job["attempt"],
                    "result": body.get("result"),
                    "finished_at": now_iso(),
                }
        else:
            retry = not ok and body.get("retryable") and job["attempt"] < self.max_attempts
            if ok:
                job["state"], p["status"] = "succeeded", "succeeded"
            elif retry:
                job["state"], p["status"] = "queued", "queued"
                job["not_before"] = time.time() + 0.05
                next_at = now_iso(1)
            else:
                job["state"], p["status"] = "failed", "failed"
            p["execution"] = {
                "status": job["state"],
                "attempts": job["attempt"],
                "result": body.get("result"),
                "finished_at": None if retry else now_iso(),
            }
        return httpx.Response(
            200,
            json={
                "job_id": id,
                "state": job["state"],
                "proposal_status": p["status"],
                "attempt": job["attempt"],
                "next_attempt_at": next_at,
            },
        )
