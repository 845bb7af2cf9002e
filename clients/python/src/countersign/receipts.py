"""Approval receipts: verify that a job was really approved before acting.

Each released job carries ``receipt``, a JWS compact serialization signed by
the server with Ed25519 (``alg: EdDSA``, header ``kid``). Its payload names the
job (``jti``), the proposal (``sub``), tenant, env, tool and the exact args.
:func:`verify_receipt` checks a receipt against a key set and the job it came
with; :class:`ReceiptVerifier` adds the key set from
``GET /.well-known/jwks.json``, fetched once and again when a ``kid`` is
unknown (the server rotated its key).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from .errors import CountersignError, ReceiptError
from .models import Approval, ClaimedJob

__all__ = [
    "AsyncReceiptVerifier",
    "KeySet",
    "Receipt",
    "ReceiptVerifier",
    "verify_receipt",
]


@dataclass(frozen=True)
class Receipt:
    """A verified receipt's payload."""

    kid: str
    iss: str | None
    jti: str
    sub: str
    tenant: str
    env: str
    tool: str
    args: dict[str, Any]
    execution_key: str | None
    approvals: list[Approval]
    auto_approved: bool
    break_glass: bool
    preview_sha256: str | None
    preview_state: str | None
    policy_sha256: str | None
    iat: int | None
    exp: int
    claims: dict[str, Any] = field(repr=False, compare=False)


class KeySet:
    """Ed25519 public keys by ``kid``, from a JWKS document. Keys of other
    types, or without a ``kid``, are ignored: receipts are EdDSA only."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._keys: dict[str, Any] = {}
        keys = jwks.get("keys")
        if not isinstance(keys, list):
            return
        for jwk in keys:
            if not isinstance(jwk, Mapping):
                continue
            kid = jwk.get("kid")
            if not isinstance(kid, str) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
                continue
            try:
                self._keys[kid] = jwt.PyJWK(dict(jwk), algorithm="EdDSA").key
            except jwt.PyJWTError:
                continue

    def get(self, kid: str) -> Any | None:
        return self._keys.get(kid)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def kids(self) -> list[str]:
        return sorted(self._keys)


def receipt_kid(token: str | None) -> str:
    """The ``kid`` of a receipt's header, checking that it is an EdDSA JWS."""
    if not token:
        raise ReceiptError("receipt_missing", "the job carries no approval receipt")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise ReceiptError("receipt_malformed", f"the receipt is not a JWS: {exc}") from exc
    if header.get("alg") != "EdDSA":
        raise ReceiptError(
            "receipt_malformed", f"the receipt's alg is {header.get('alg')!r}, not 'EdDSA'"
        )
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ReceiptError("receipt_malformed", "the receipt's header has no kid")
    return kid


def verify_receipt(
    token: str | None,
    keys: KeySet,
    job: ClaimedJob,
    *,
    env: str,
    tools: frozenset[str] | None = None,
    issuer: str | None = None,
    leeway: float = 0.0,
) -> Receipt:
    """Verify ``token`` as the approval receipt of ``job`` and return it.

    Checks the EdDSA signature with the key named by ``kid``, that it has not
    expired (``exp``, with ``leeway`` seconds of clock skew), that ``jti`` is
    the job id, ``sub`` the proposal, and that tenant, env, tool,
    ``execution_key`` and ``preview_state`` are the job's. ``env`` is the env
    the caller acts in, from its **own configuration** (never the job's: the
    queue is what the receipt checks); ``tools`` (the tools the caller
    implements) and ``issuer``, when given, must also match. Raises
    :class:`ReceiptError` naming the reason.
    """
    _check_env(env)
    kid = receipt_kid(token)
    assert token is not None
    key = keys.get(kid)
    if key is None:
        raise ReceiptError("receipt_unknown_key", f"no published key has kid {kid!r}")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["EdDSA"],
            leeway=leeway,
            issuer=issuer,
            options={
                "require": ["exp", "jti", "sub"],
                "verify_aud": False,
                # iat is informative here; exp is the deadline that matters.
                "verify_iat": False,
            },
        )
    except jwt.ExpiredSignatureError as exc:
        raise ReceiptError("receipt_expired", "the receipt has expired (exp passed)") from exc
    except jwt.InvalidSignatureError as exc:
        raise ReceiptError(
            "receipt_bad_signature", "the receipt's signature does not verify"
        ) from exc
    except jwt.InvalidIssuerError as exc:
        raise ReceiptError("receipt_mismatch", f"the receipt's iss is not {issuer!r}") from exc
    except jwt.DecodeError as exc:
        raise ReceiptError("receipt_malformed", f"the receipt cannot be decoded: {exc}") from exc
    except jwt.InvalidTokenError as exc:
        raise ReceiptError("receipt_malformed", f"the receipt is invalid: {exc}") from exc

    expected: list[tuple[str, Any]] = [
        ("jti", job.job_id),
        ("sub", job.proposal_id),
        ("tenant", job.tenant),
        ("env", job.env),
        ("tool", job.tool),
    ]
    if job.execution_key is not None:
        expected.append(("execution_key", job.execution_key))
    if job.preview_state is not None:
        expected.append(("preview_state", job.preview_state))
    for name, value in expected:
        if claims.get(name) != value:
            raise ReceiptError(
                "receipt_mismatch",
                f"the receipt's {name} is {claims.get(name)!r}, the job's is {value!r}",
            )
    if claims.get("env") != env:
        raise ReceiptError(
            "receipt_mismatch", f"the receipt is for env {claims.get('env')!r}, not {env!r}"
        )
    if tools is not None and claims.get("tool") not in tools:
        raise ReceiptError(
            "receipt_mismatch", f"the receipt is for tool {claims.get('tool')!r}, not handled here"
        )
    args = claims.get("args")
    if not isinstance(args, dict):
        raise ReceiptError("receipt_malformed", "the receipt carries no args object")

    def opt_str(name: str) -> str | None:
        value = claims.get(name)
        return value if isinstance(value, str) else None

    iat = claims.get("iat")
    return Receipt(
        kid=kid,
        iss=opt_str("iss"),
        jti=str(claims["jti"]),
        sub=str(claims["sub"]),
        tenant=str(claims["tenant"]),
        env=str(claims["env"]),
        tool=str(claims["tool"]),
        args=args,
        execution_key=opt_str("execution_key"),
        approvals=[
            Approval.from_json(a) for a in claims.get("approvals") or [] if isinstance(a, Mapping)
        ],
        auto_approved=claims.get("auto_approved") is True,
        break_glass=claims.get("break_glass") is True,
        preview_sha256=opt_str("preview_sha256"),
        preview_state=opt_str("preview_state"),
        policy_sha256=opt_str("policy_sha256"),
        iat=iat if isinstance(iat, int) else None,
        exp=int(claims["exp"]),
        claims=claims,
    )


def _check_env(env: object) -> None:
    if not isinstance(env, str) or not env:
        raise ValueError(
            "env must name the env this executor acts in (from its own configuration, "
            f"e.g. 'prod'), got {env!r}"
        )


@dataclass(frozen=True)
class VerifyOptions:
    env: str
    tools: frozenset[str] | None = None
    issuer: str | None = None
    leeway: float = 0.0


class ReceiptVerifier:
    """Verifies receipts against the server's JWKS, fetched with ``fetch``
    (e.g. ``client.jwks``) on first use and once more whenever a receipt names
    a ``kid`` the cached set lacks. ``env`` is the env the executor acts in,
    from its own configuration (see :func:`verify_receipt`)."""

    def __init__(
        self,
        fetch: Callable[[], Mapping[str, Any]],
        *,
        env: str,
        tools: frozenset[str] | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
    ) -> None:
        _check_env(env)
        self._fetch = fetch
        self._opts = VerifyOptions(env=env, tools=tools, issuer=issuer, leeway=leeway)
        self._keys: KeySet | None = None
        self._lock = threading.Lock()
        #: How many times the JWKS was fetched (for logs and tests).
        self.fetches = 0

    def _refresh(self) -> KeySet:
        try:
            document = self._fetch()
        except CountersignError as exc:
            raise ReceiptError(
                "jwks_unavailable", f"cannot fetch the server's public keys: {exc}"
            ) from exc
        keys = KeySet(document)
        with self._lock:
            self._keys = keys
            self.fetches += 1
        return keys

    def verify(self, job: ClaimedJob) -> Receipt:
        kid = receipt_kid(job.receipt)
        with self._lock:
            keys = self._keys
        if keys is None or kid not in keys:
            keys = self._refresh()
        return verify_receipt(job.receipt, keys, job, **vars(self._opts))


class AsyncReceiptVerifier:
    """The asyncio twin of :class:`ReceiptVerifier` (``fetch`` is a coroutine
    function such as ``async_client.jwks``)."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Mapping[str, Any]]],
        *,
        env: str,
        tools: frozenset[str] | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
    ) -> None:
        _check_env(env)
        self._fetch = fetch
        self._opts = VerifyOptions(env=env, tools=tools, issuer=issuer, leeway=leeway)
        self._keys: KeySet | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def _refresh(self, kid: str) -> KeySet:
        async with self._lock:
            # Another task may have fetched a set with this kid meanwhile.
            if self._keys is not None and kid in self._keys:
                return self._keys
            try:
                document = await self._fetch()
            except CountersignError as exc:
                raise ReceiptError(
                    "jwks_unavailable", f"cannot fetch the server's public keys: {exc}"
                ) from exc
            self._keys = KeySet(document)
            self.fetches += 1
            return self._keys

    async def verify(self, job: ClaimedJob) -> Receipt:
        kid = receipt_kid(job.receipt)
        keys = self._keys
        if keys is None or kid not in keys:
            keys = await self._refresh(kid)
        return verify_receipt(job.receipt, keys, job, **vars(self._opts))
