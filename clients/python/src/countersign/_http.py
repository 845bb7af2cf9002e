"""The transport under both clients: one request description, retries with
exponential backoff and jitter on connection errors and 5xx answers only, and
the mapping of error answers to exceptions."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._version import __version__
from .errors import APIError, TransportError, error_from_response

log = logging.getLogger("countersign")

USER_AGENT = f"countersign-python/{__version__}"

#: Extra read time over a long-poll's own wait, so the server answers first.
LONG_POLL_MARGIN = 10.0

# Failures where no answer arrived; retrying them is safe because every
# mutation of the API is idempotent (proposals by key, completions by body,
# heartbeats by lease) or harmless to repeat (minting, claiming: a claim whose
# answer was lost comes back when its lease runs out).
_RETRYABLE_EXCEPTIONS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a request that got no answer or a 5xx.

    The delay before retry ``n`` (0-based) is drawn from
    ``[d/2, d]`` with ``d = min(max_backoff, initial_backoff * 2**n)``; a
    ``Retry-After`` header on a 5xx answer raises it (up to ``max_backoff``).
    4xx answers are never retried.
    """

    max_retries: int = 3
    initial_backoff: float = 0.25
    max_backoff: float = 8.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoffs must be >= 0")

    def delay(self, retry: int, rng: random.Random, retry_after: float | None = None) -> float:
        ceiling = min(self.max_backoff, self.initial_backoff * (2**retry))
        wait = rng.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_backoff))
        return wait


NO_RETRIES = RetryPolicy(max_retries=0)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    json: Any = None
    params: Mapping[str, str | int] | None = None
    auth: bool = True
    #: Seconds the server may legitimately hold the request (long polls).
    hold: float = 0.0
    ok: tuple[int, ...] = (200,)
    extra_headers: Mapping[str, str] = field(default_factory=dict)


def make_timeout(timeout: float | httpx.Timeout) -> httpx.Timeout:
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)


def timeout_for(base: httpx.Timeout, hold: float) -> httpx.Timeout:
    """The client's timeout with room for a long poll of ``hold`` seconds."""
    if hold <= 0:
        return base
    read = base.read
    needed = hold + LONG_POLL_MARGIN
    return httpx.Timeout(
        connect=base.connect,
        read=None if read is None else max(read, needed),
        write=base.write,
        pool=base.pool,
    )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _decode(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def raise_for(response: httpx.Response) -> None:
    """Raise the API's exception for an error answer."""
    raise error_from_response(
        response.status_code,
        _decode(response),
        request_id=response.headers.get("x-request-id"),
        text=response.text if response.content else "",
        retry_after=_retry_after(response),
    )


def json_body(response: httpx.Response) -> dict[str, Any]:
    """A success answer's JSON object."""
    body = _decode(response)
    if not isinstance(body, dict):
        raise APIError(
            f"expected a JSON object from {response.request.method} "
            f"{response.request.url.path}, got {response.text[:100]!r}",
            code="unexpected_response",
            status=response.status_code,
            request_id=response.headers.get("x-request-id"),
        )
    return body


class Transport:
    """Settings shared by the sync and async senders."""

    def __init__(
        self,
        base_url: str,
        credential: str | None,
        *,
        timeout: float | httpx.Timeout,
        retry: RetryPolicy,
        headers: Mapping[str, str] | None,
        rng: random.Random | None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.credential = credential
        self.timeout = make_timeout(timeout)
        self.retry = retry
        self.headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
        self.rng = rng or random.Random()

    def build(self, http: httpx.Client | httpx.AsyncClient, req: Request) -> httpx.Request:
        headers = dict(self.headers)
        headers.update(req.extra_headers)
        if req.auth:
            if not self.credential:
                raise ValueError(
                    "this client has no credential; pass a service key, run token or executor key"
                )
            headers["Authorization"] = f"Bearer {self.credential}"
        return http.build_request(
            req.method,
            self.base_url + req.path,
            json=req.json,
            params=dict(req.params) if req.params else None,
            headers=headers,
            timeout=timeout_for(self.timeout, req.hold),
        )

    def should_retry(self, attempt: int) -> bool:
        return attempt < self.retry.max_retries

    def describe(self, req: Request) -> str:
        return f"{req.method} {req.path}"


def send_sync(
    transport: Transport,
    http: httpx.Client,
    req: Request,
    sleep: Callable[[float], None] = time.sleep,
) -> httpx.Response:
    """Send ``req``, retrying connection failures and 5xx answers."""
    attempt = 0
    while True:
        try:
            response = http.send(transport.build(http, req))
        except _RETRYABLE_EXCEPTIONS as exc:
            if not transport.should_retry(attempt):
                raise TransportError(
                    f"{transport.describe(req)}: no answer from {transport.base_url} "
                    f"after {attempt + 1} attempt(s): {exc!r}"
                ) from exc
            delay = transport.retry.delay(attempt, transport.rng)
            log.warning("%s failed (%r); retry in %.2fs", transport.describe(req), exc, delay)
            sleep(delay)
            attempt += 1
            continue
        if response.status_code >= 500 and transport.should_retry(attempt):
            delay = transport.retry.delay(attempt, transport.rng, _retry_after(response))
            log.warning(
                "%s answered %d; retry in %.2fs",
                transport.describe(req),
                response.status_code,
                delay,
            )
            response.close()
            sleep(delay)
            attempt += 1
            continue
        if response.status_code not in req.ok:
            raise_for(response)
        return response


async def send_async(
    transport: Transport,
    http: httpx.AsyncClient,
    req: Request,
) -> httpx.Response:
    """The async twin of :func:`send_sync`."""
    attempt = 0
    while True:
        try:
            response = await http.send(transport.build(http, req))
        except _RETRYABLE_EXCEPTIONS as exc:
            if not transport.should_retry(attempt):
                raise TransportError(
                    f"{transport.describe(req)}: no answer from {transport.base_url} "
                    f"after {attempt + 1} attempt(s): {exc!r}"
                ) from exc
            delay = transport.retry.delay(attempt, transport.rng)
            log.warning("%s failed (%r); retry in %.2fs", transport.describe(req), exc, delay)
            await asyncio.sleep(delay)
            attempt += 1
            continue
        if response.status_code >= 500 and transport.should_retry(attempt):
            delay = transport.retry.delay(attempt, transport.rng, _retry_after(response))
            log.warning(
                "%s answered %d; retry in %.2fs",
                transport.describe(req),
                response.status_code,
                delay,
            )
            await response.aclose()
            await asyncio.sleep(delay)
            attempt += 1
            continue
        if response.status_code not in req.ok:
            raise_for(response)
        return response
