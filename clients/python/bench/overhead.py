"""The SDK's overhead per proposal, against raw httpx on the same server.

Starts a countersign server the way the integration tests do (``COUNTERSIGN_BIN``
on a fresh SQLite database, tests/harness.py), or uses a running one
(``--url`` and ``--service-key``), then sends N sequential proposals with a
plain ``httpx.Client`` and N with ``countersign.Client``, interleaved, and
prints the median and p99 latency of each in milliseconds and the
difference.

    .venv/bin/python bench/overhead.py -n 500
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import countersign
from harness import LocalServer

#: Proposals per run: the example policy's support/send route allows 25 steps
#: and 300 seconds of a run's age, so runs are minted as they are needed.
PER_RUN = 20


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


@contextmanager
def server_from(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    if args.url:
        if not args.service_key:
            raise SystemExit("--url needs --service-key")
        yield args.url, args.service_key
        return
    with tempfile.TemporaryDirectory(prefix="countersign-bench-") as tmp:
        srv = LocalServer.start(Path(tmp))
        try:
            yield srv.url, srv.service_key
        finally:
            srv.stop()


class Tokens:
    """Run tokens, each used for at most PER_RUN proposals; a new run is
    minted when one is used up (outside the timed calls)."""

    def __init__(self, service: countersign.Client) -> None:
        self._service = service
        self._token = ""
        self._left = 0

    def next(self) -> str:
        if self._left == 0:
            self._token = self._service.mint_run("support/send", ttl_seconds=900).token
            self._left = PER_RUN
        self._left -= 1
        return self._token


def proposal(i: int) -> tuple[str, dict[str, str], str]:
    """Tool, args and a fresh idempotency key: every proposal is new (201)."""
    return (
        "ticket.close",
        {"ticket_id": f"T-{i + 1}", "reason": "benchmark"},
        f"bench-{uuid.uuid4().hex}",
    )


def measure(n: int, warmup: int, url: str, service_key: str) -> tuple[list[float], list[float]]:
    with (
        countersign.Client(url, service_key, timeout=30.0) as service,
        httpx.Client(base_url=url, timeout=30.0) as raw,
    ):
        raw_tokens = Tokens(service)
        sdk_tokens = Tokens(service)
        sdk_clients: dict[str, countersign.Client] = {}

        def raw_once(i: int, token: str) -> None:
            tool, args, key = proposal(i)
            r = raw.post(
                "/api/v1/proposals",
                json={"tool": tool, "args": args, "idempotency_key": key},
                headers={"Authorization": f"Bearer {token}"},
            )
            if r.status_code != 201:
                raise RuntimeError(f"raw proposal answered {r.status_code}: {r.text[:200]}")

        def sdk_once(i: int, token: str) -> None:
            client = sdk_clients.get(token)
            if client is None:
                client = sdk_clients[token] = service.with_credential(token)
            tool, args, key = proposal(i)
            if client.propose(tool, args, idempotency_key=key).replayed:
                raise RuntimeError("a benchmark proposal was replayed")

        def timed(fn: Callable[[int, str], None], i: int, tokens: Tokens) -> float:
            token = tokens.next()  # a mint, when one is due, is not timed
            started = time.perf_counter()
            fn(i, token)
            return (time.perf_counter() - started) * 1000.0

        for i in range(warmup):
            raw_once(i, raw_tokens.next())
            sdk_once(i, sdk_tokens.next())
        raw_ms: list[float] = []
        sdk_ms: list[float] = []
        for i in range(warmup, warmup + n):
            # interleaved, alternating who goes first, so drift hits both alike
            if i % 2:
                raw_ms.append(timed(raw_once, i, raw_tokens))
                sdk_ms.append(timed(sdk_once, i, sdk_tokens))
            else:
                sdk_ms.append(timed(sdk_once, i, sdk_tokens))
                raw_ms.append(timed(raw_once, i, raw_tokens))
        return raw_ms, sdk_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=300, help="proposals each way (default 300)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--url", help="use this running server instead of starting one")
    parser.add_argument("--service-key", help="a service key of tenant acme, env prod (with --url)")
    args = parser.parse_args()
    if args.n < 1:
        raise SystemExit("-n must be at least 1")
    with server_from(args) as (url, key):
        raw_ms, sdk_ms = measure(args.n, args.warmup, url, key)
    rows = [("raw httpx", raw_ms), ("countersign.Client", sdk_ms)]
    print(f"{args.n} sequential proposals each way against {url if args.url else 'a fresh server'}")
    print(f"{'':20} {'median ms':>10} {'p99 ms':>10}")
    for name, ms in rows:
        print(f"{name:20} {statistics.median(ms):10.3f} {percentile(ms, 99):10.3f}")
    d_med = statistics.median(sdk_ms) - statistics.median(raw_ms)
    d_p99 = percentile(sdk_ms, 99) - percentile(raw_ms, 99)
    print(f"{'difference':20} {d_med:10.3f} {d_p99:10.3f}")


if __name__ == "__main__":
    main()
