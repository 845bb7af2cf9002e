"""A real countersign server for integration tests and the benchmark.

:class:`LocalServer` starts the binary (``COUNTERSIGN_BIN``, default
``<repo>/target/debug/countersign``) on a fresh SQLite database in a temporary
directory, adds people and keys with its command line, and waits for
``/healthz``. :class:`Reviewer` signs in and decides like a browser would.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

#: clients/python/tests/harness.py -> the repository root
REPO = Path(__file__).resolve().parents[3]
POLICY = REPO / "examples" / "policy.toml"
PASSWORD = "correct horse battery staple"
TENANT = "acme"
ENV = "prod"
EXECUTOR_TOOLS = ("ticket.close", "email.send", "refund.create")


def server_binary() -> Path:
    return Path(os.environ.get("COUNTERSIGN_BIN") or REPO / "target" / "debug" / "countersign")


def binary_available() -> bool:
    path = server_binary()
    return path.is_file() and os.access(path, os.X_OK)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class LocalServer:
    """A running server and the credentials made for it."""

    binary: Path
    workdir: Path
    env: dict[str, str]
    url: str = ""
    service_key: str = ""
    executor_key: str = ""
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)
    policy: Path = POLICY

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        reviewers: tuple[str, ...] = ("alice", "bob"),
        admin: str = "admin",
        policy: Path = POLICY,
        startup_timeout: float = 60.0,
    ) -> LocalServer:
        binary = server_binary()
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise RuntimeError(
                f"no countersign binary at {binary}: build it, or set COUNTERSIGN_BIN"
            )
        env = dict(os.environ)
        env["DATABASE_URL"] = f"sqlite://{workdir}/t.db"
        env.setdefault("RUST_LOG", "warn")
        site = REPO / "target" / "site"
        if site.is_dir():
            env.setdefault("LEPTOS_SITE_ROOT", str(site))
        server = cls(
            binary=binary,
            workdir=workdir,
            env=env,
            log_path=workdir / "server.log",
            policy=policy,
        )
        server.cli("migrate")
        for name in reviewers:
            server.cli(
                "user", "add", name, "--role", "reviewer", "--tenant", TENANT, stdin=PASSWORD
            )
        server.cli("user", "add", admin, "--role", "admin", stdin=PASSWORD)
        server.service_key = server.new_service_key("sdk")
        server.executor_key = server.new_executor_key("sdk", EXECUTOR_TOOLS)
        server._serve(startup_timeout)
        return server

    # -- command line

    def cli(self, *args: str, stdin: str | None = None) -> str:
        """Run ``countersign ARGS`` against this server's database; its stdout."""
        done = subprocess.run(
            [str(self.binary), *args],
            input=(stdin + "\n").encode() if stdin is not None else None,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            env=self.env,
            cwd=REPO,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"countersign {' '.join(args)} exited {done.returncode}: "
                f"{done.stderr.decode(errors='replace').strip()}"
            )
        return done.stdout.decode()

    def new_service_key(self, name: str, tenant: str = TENANT, env: str = ENV) -> str:
        out = self.cli("key", "create", "service", "--tenant", tenant, "--env", env, "--name", name)
        return out.strip().splitlines()[-1].strip()

    def new_executor_key(self, name: str, tools: tuple[str, ...], env: str = ENV) -> str:
        out = self.cli(
            "key",
            "create",
            "executor",
            "--env",
            env,
            "--tools",
            ",".join(tools),
            "--name",
            name,
            "--policy",
            str(self.policy),
        )
        return out.strip().splitlines()[-1].strip()

    # -- the server process

    def _serve(self, startup_timeout: float) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                str(self.binary),
                "serve",
                "--policy",
                str(self.policy),
                "--addr",
                f"127.0.0.1:{port}",
                # Every reviewer the tests sign in comes from this one
                # address: more than a person's few sign-ins a minute.
                "--sign-in-sessions-per-minute",
                "100000",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=REPO,
        )
        log.close()
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"countersign serve exited {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"countersign did not answer /healthz in {startup_timeout}s")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


_CSRF_INPUT = re.compile(r"<input\b[^>]*\bname=\"csrf\"[^>]*>", re.IGNORECASE)
_VALUE = re.compile(r"\bvalue=\"([^\"]+)\"", re.IGNORECASE)


class Reviewer:
    """A person deciding in the browser: cookies, CSRF token, Origin header.

    Uses the browser door's server functions (``/api/login``,
    ``/api/session``, ``/api/review``, ``/api/decide``) as the pages do."""

    def __init__(self, base_url: str, username: str, password: str = PASSWORD) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.http = httpx.Client(base_url=self.base_url, follow_redirects=False, timeout=15.0)
        self.csrf = ""
        self.signed_in = False

    def close(self) -> None:
        self.http.close()

    def _origin(self) -> dict[str, str]:
        # Origin for the CSRF layer; Accept: JSON so a server function answers
        # with its status rather than a redirect meant for script-less forms.
        return {"Origin": self.base_url, "Accept": "application/json"}

    def _page_csrf(self) -> str:
        page = self.http.get("/login")
        page.raise_for_status()
        for tag in _CSRF_INPUT.findall(page.text):
            m = _VALUE.search(tag)
            if m:
                return m.group(1)
        # The page renders the form once the session info resolved; fall
        # back to the same session info the page uses.
        return str(self.session()["csrf"])

    def session(self) -> dict[str, Any]:
        r = self.http.get("/api/session", headers={"Accept": "application/json"})
        r.raise_for_status()
        info: dict[str, Any] = r.json()
        return info

    def login(self) -> None:
        csrf = self._page_csrf()
        r = self.http.post(
            "/api/login",
            data={"username": self.username, "password": self.password, "csrf": csrf, "next": "/"},
            headers=self._origin(),
        )
        if r.status_code not in (200, 302, 303, 307):
            raise RuntimeError(f"login of {self.username} refused: {r.status_code} {r.text[:200]}")
        location = r.headers.get("location", "")
        if location.startswith(("http://", "https://")) and not location.startswith(self.base_url):
            raise RuntimeError(f"login redirected to another host: {location}")
        info = self.session()
        if not info.get("me"):
            raise RuntimeError(f"{self.username} is not signed in after login: {info}")
        self.csrf = info["csrf"]
        self.signed_in = True

    def queue(self) -> list[dict[str, Any]]:
        """The proposals waiting for this person, as the queue page lists them."""
        if not self.signed_in:
            self.login()
        r = self.http.get("/api/queue", headers={"Accept": "application/json"})
        if r.status_code != 200:
            raise RuntimeError(f"queue: {r.status_code} {r.text[:300]}")
        rows: list[dict[str, Any]] = r.json()["rows"]
        return rows

    def find(self, reason: str, timeout: float = 20.0) -> str:
        """The id of the queued proposal whose reason is ``reason``, once it shows."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for row in self.queue():
                if row.get("reason_short") == reason:
                    return str(row["id"])
            time.sleep(0.1)
        raise RuntimeError(f"no proposal with reason {reason!r} reached {self.username}'s queue")

    def review(self, proposal_id: str) -> dict[str, Any]:
        if not self.signed_in:
            self.login()
        r = self.http.get(
            "/api/review", params={"id": proposal_id}, headers={"Accept": "application/json"}
        )
        if r.status_code != 200:
            raise RuntimeError(f"review of {proposal_id}: {r.status_code} {r.text[:300]}")
        body: dict[str, Any] = r.json()
        return body

    def decide(self, proposal_id: str, verdict: str, comment: str = "") -> httpx.Response:
        review = self.review(proposal_id)
        return self.http.post(
            "/api/decide",
            data={
                "id": proposal_id,
                "verdict": verdict,
                "comment": comment,
                "content_hash": review["content_hash"],
                "csrf": self.csrf,
            },
            headers=self._origin(),
        )

    def approve(self, proposal_id: str, comment: str = "") -> None:
        r = self.decide(proposal_id, "approve", comment)
        if r.status_code != 200:
            raise RuntimeError(f"{self.username} could not approve: {r.status_code} {r.text[:300]}")

    def reject(self, proposal_id: str, comment: str) -> None:
        r = self.decide(proposal_id, "reject", comment)
        if r.status_code != 200:
            raise RuntimeError(f"{self.username} could not reject: {r.status_code} {r.text[:300]}")
