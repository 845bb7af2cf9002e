"""Receipt verification: signature (EdDSA with the key named by kid), exp,
the job's identity (jti, sub, tenant, env, tool, execution_key), JWKS
caching and the one re-fetch on an unknown kid."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from countersign import (
    AsyncReceiptVerifier,
    ClaimedJob,
    KeySet,
    ReceiptError,
    ReceiptVerifier,
    TransportError,
    verify_receipt,
)
from fakeserver import ENV, SigningKey, b64url

JOB = ClaimedJob(
    job_id="job_1",
    lease_id="lse_1",
    proposal_id="prp_1",
    tenant="acme",
    env="prod",
    tool="ticket.close",
    args={"ticket_id": "T-1", "reason": "queue copy"},
    idempotency_key="k",
    attempt=1,
    lease_expires_at=None,
    kind="execute",
    execution_key="exk_1",
)


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": "http://cs.test",
        "jti": "job_1",
        "sub": "prp_1",
        "tenant": "acme",
        "env": "prod",
        "tool": "ticket.close",
        "args": {"ticket_id": "T-1", "reason": "approved copy"},
        "execution_key": "exk_1",
        "approvals": [{"user": "alice", "at": "2026-11-22T10:00:00Z"}],
        "auto_approved": False,
        "break_glass": False,
        "preview_sha256": None,
        "preview_state": None,
        "policy_sha256": "ab" * 32,
        "iat": now,
        "exp": now + 600,
    }
    base.update(over)
    return base


@pytest.fixture
def key() -> SigningKey:
    return SigningKey("k1", Ed25519PrivateKey.generate())


def sign(key: SigningKey, payload: Mapping[str, Any], kid: str | None = None) -> str:
    return jwt.encode(
        dict(payload), key.private, algorithm="EdDSA", headers={"kid": kid or key.kid}
    )


def keyset(*keys: SigningKey) -> KeySet:
    return KeySet({"keys": [k.jwk() for k in keys]})


def job(receipt: str | None, **over: Any) -> ClaimedJob:
    fields = {**JOB.__dict__, "receipt": receipt, **over}
    fields.pop("raw", None)
    return ClaimedJob(**fields)


def test_a_good_receipt(key: SigningKey) -> None:
    r = verify_receipt(sign(key, claims()), keyset(key), job(None), env=ENV)
    assert r.jti == "job_1"
    assert r.sub == "prp_1"
    assert r.kid == "k1"
    assert r.args == {"ticket_id": "T-1", "reason": "approved copy"}
    assert r.execution_key == "exk_1"
    assert [a.by for a in r.approvals] == ["alice"]
    assert r.policy_sha256 == "ab" * 32
    assert not r.auto_approved
    assert not r.break_glass


def test_tampered_payload_fails(key: SigningKey) -> None:
    token = sign(key, claims())
    head, payload, sig = token.split(".")
    body = json.loads(jwt.utils.base64url_decode(payload))
    body["args"]["ticket_id"] = "T-999"
    forged = ".".join([head, b64url(json.dumps(body).encode()), sig])
    with pytest.raises(ReceiptError) as info:
        verify_receipt(forged, keyset(key), job(None), env=ENV)
    assert info.value.code == "receipt_bad_signature"


def test_signed_by_another_key_with_the_same_kid(key: SigningKey) -> None:
    impostor = SigningKey("k1", Ed25519PrivateKey.generate())
    with pytest.raises(ReceiptError) as info:
        verify_receipt(sign(impostor, claims()), keyset(key), job(None), env=ENV)
    assert info.value.code == "receipt_bad_signature"


def test_expired(key: SigningKey) -> None:
    now = int(time.time())
    token = sign(key, claims(iat=now - 1000, exp=now - 10))
    with pytest.raises(ReceiptError) as info:
        verify_receipt(token, keyset(key), job(None), env=ENV)
    assert info.value.code == "receipt_expired"
    # leeway covers clock skew when asked for
    assert verify_receipt(token, keyset(key), job(None), leeway=60, env=ENV).jti == "job_1"


def test_unknown_kid(key: SigningKey) -> None:
    with pytest.raises(ReceiptError) as info:
        verify_receipt(sign(key, claims(), kid="k-unknown"), keyset(key), job(None), env=ENV)
    assert info.value.code == "receipt_unknown_key"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("jti", "job_other"),
        ("sub", "prp_other"),
        ("tenant", "globex"),
        ("env", "staging"),
        ("tool", "refund.create"),
        ("execution_key", "exk_other"),
    ],
)
def test_receipt_for_another_job(key: SigningKey, field: str, value: str) -> None:
    with pytest.raises(ReceiptError) as info:
        verify_receipt(sign(key, claims(**{field: value})), keyset(key), job(None), env=ENV)
    assert info.value.code == "receipt_mismatch"
    assert field in info.value.message


def test_expected_env_tools_and_issuer(key: SigningKey) -> None:
    token = sign(key, claims())
    ks = keyset(key)
    with pytest.raises(ReceiptError, match="env"):
        verify_receipt(token, ks, job(None), env="staging")
    with pytest.raises(ReceiptError, match="tool"):
        verify_receipt(token, ks, job(None), tools=frozenset({"email.send"}), env=ENV)
    with pytest.raises(ReceiptError) as info:
        verify_receipt(token, ks, job(None), issuer="http://elsewhere", env=ENV)
    assert info.value.code == "receipt_mismatch"
    assert verify_receipt(token, ks, job(None), env="prod", issuer="http://cs.test").env == "prod"


def test_env_is_the_executors_own_not_the_jobs(key: SigningKey) -> None:
    """A job and receipt that agree with each other on another env are still
    refused: the env to act in comes from the executor's configuration."""
    staging = job(None, env="staging")
    token = sign(key, claims(env="staging"))
    with pytest.raises(ReceiptError) as info:
        verify_receipt(token, keyset(key), staging, env="prod")
    assert info.value.code == "receipt_mismatch"
    assert "'staging', not 'prod'" in info.value.message
    assert verify_receipt(token, keyset(key), staging, env="staging").env == "staging"


@pytest.mark.parametrize("env", ["", None, 7])
def test_env_is_required(key: SigningKey, env: Any) -> None:
    token = sign(key, claims())
    with pytest.raises(ValueError, match="env must name the env"):
        verify_receipt(token, keyset(key), job(None), env=env)
    with pytest.raises(ValueError, match="env must name the env"):
        ReceiptVerifier(JWKS(key), env=env)
    with pytest.raises(ValueError, match="env must name the env"):
        AsyncReceiptVerifier(JWKS(key).fetch_async, env=env)


def test_preview_state_must_match(key: SigningKey) -> None:
    token = sign(key, claims(preview_state="v1"))
    assert (
        verify_receipt(token, keyset(key), job(None, preview_state="v1"), env=ENV).preview_state
        == "v1"
    )
    with pytest.raises(ReceiptError, match="preview_state"):
        verify_receipt(token, keyset(key), job(None, preview_state="v2"), env=ENV)


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (None, "receipt_missing"),
        ("", "receipt_missing"),
        ("not-a-jws", "receipt_malformed"),
    ],
)
def test_missing_or_malformed(key: SigningKey, token: str | None, code: str) -> None:
    with pytest.raises(ReceiptError) as info:
        verify_receipt(token, keyset(key), job(None), env=ENV)
    assert info.value.code == code


def test_other_algorithms_are_refused(key: SigningKey) -> None:
    hs = jwt.encode(
        claims(), "secret-secret-secret-secret-32by", algorithm="HS256", headers={"kid": "k1"}
    )
    with pytest.raises(ReceiptError, match="alg"):
        verify_receipt(hs, keyset(key), job(None), env=ENV)
    header = b64url(json.dumps({"alg": "none", "kid": "k1"}).encode())
    unsigned = f"{header}.{b64url(json.dumps(claims()).encode())}."
    with pytest.raises(ReceiptError) as info:
        verify_receipt(unsigned, keyset(key), job(None), env=ENV)
    assert info.value.code == "receipt_malformed"


def test_missing_claims_and_args(key: SigningKey) -> None:
    no_exp = claims()
    del no_exp["exp"]
    with pytest.raises(ReceiptError) as info:
        verify_receipt(sign(key, no_exp), keyset(key), job(None), env=ENV)
    assert info.value.code == "receipt_malformed"
    with pytest.raises(ReceiptError, match="args"):
        verify_receipt(sign(key, claims(args="x")), keyset(key), job(None), env=ENV)


def test_keyset_ignores_keys_that_are_not_ed25519(key: SigningKey) -> None:
    ks = KeySet(
        {
            "keys": [
                key.jwk(),
                {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},
                {"kty": "OKP", "crv": "X25519", "kid": "x", "x": key.jwk()["x"]},
                {"kty": "OKP", "crv": "Ed25519", "x": key.jwk()["x"]},  # no kid
                {"kty": "OKP", "crv": "Ed25519", "kid": "broken", "x": "!!"},
                "junk",
            ]
        }
    )
    assert ks.kids == ["k1"]
    assert len(KeySet({})) == 0


# ------------------------------------------------------------ the verifier


class JWKS:
    """A JWKS endpoint whose published keys a test can change."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.down = False

    def __call__(self) -> dict[str, Any]:
        self.fetches += 1
        if self.down:
            raise TransportError("no answer")
        return {"keys": [k.jwk() for k in self.keys]}

    async def fetch_async(self) -> dict[str, Any]:
        return self()


def test_verifier_fetches_once_and_caches(key: SigningKey) -> None:
    endpoint = JWKS(key)
    v = ReceiptVerifier(endpoint, env=ENV)
    for _ in range(3):
        assert v.verify(job(sign(key, claims()))).jti == "job_1"
    assert endpoint.fetches == 1 == v.fetches


def test_verifier_refetches_once_for_a_rotated_key(key: SigningKey) -> None:
    endpoint = JWKS(key)
    v = ReceiptVerifier(endpoint, env=ENV)
    v.verify(job(sign(key, claims())))
    new = SigningKey("k2", Ed25519PrivateKey.generate())
    endpoint.keys.append(new)  # rotation: the server publishes the new key
    assert v.verify(job(sign(new, claims()))).kid == "k2"
    assert endpoint.fetches == 2
    # the old key is still published and cached
    assert v.verify(job(sign(key, claims()))).kid == "k1"
    assert endpoint.fetches == 2


def test_verifier_unknown_kid_after_refetch_fails(key: SigningKey) -> None:
    endpoint = JWKS(key)
    v = ReceiptVerifier(endpoint, env=ENV)
    stranger = SigningKey("k9", Ed25519PrivateKey.generate())
    with pytest.raises(ReceiptError) as info:
        v.verify(job(sign(stranger, claims())))
    assert info.value.code == "receipt_unknown_key"
    assert endpoint.fetches == 1  # the first fetch already was the re-fetch
    with pytest.raises(ReceiptError):
        v.verify(job(sign(stranger, claims())))
    assert endpoint.fetches == 2  # exactly one re-fetch per unknown kid seen


def test_verifier_reports_an_unreachable_jwks(key: SigningKey) -> None:
    endpoint = JWKS(key)
    endpoint.down = True
    with pytest.raises(ReceiptError) as info:
        ReceiptVerifier(endpoint, env=ENV).verify(job(sign(key, claims())))
    assert info.value.code == "jwks_unavailable"


def test_verifier_passes_its_expectations(key: SigningKey) -> None:
    v = ReceiptVerifier(JWKS(key), env="staging")
    with pytest.raises(ReceiptError, match="env"):
        v.verify(job(sign(key, claims())))


async def test_async_verifier(key: SigningKey) -> None:
    endpoint = JWKS(key)
    v = AsyncReceiptVerifier(endpoint.fetch_async, env=ENV)
    assert (await v.verify(job(sign(key, claims())))).jti == "job_1"
    new = SigningKey("k2", Ed25519PrivateKey.generate())
    endpoint.keys.append(new)
    assert (await v.verify(job(sign(new, claims())))).kid == "k2"
    assert endpoint.fetches == 2
    now = int(time.time())
    with pytest.raises(ReceiptError) as info:
        await v.verify(job(sign(key, claims(exp=now - 5))))
    assert info.value.code == "receipt_expired"
    endpoint.down = True
    with pytest.raises(ReceiptError) as down:
        await v.verify(job(sign(SigningKey("k3", Ed25519PrivateKey.generate()), claims())))
    assert down.value.code == "jwks_unavailable"
