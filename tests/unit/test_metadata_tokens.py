"""IMDSv2 tokens and their rules with a fake clock; the per-instance rate limiter."""
from __future__ import annotations

import pytest

from agent.metadata.document import MetadataOptions
from agent.metadata.ratelimit import RateLimiter
from agent.metadata.reply import Reply
from agent.metadata.tokens import TokenIssuer, authorize_get, parse_ttl, put_token
from tests.unit.test_metadata_document import INSTANCE_ID, OTHER_ID

SECRET = b"s" * 32


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def issuer(clock):
    return TokenIssuer(SECRET, clock)


def ttl_headers(*values):
    return {"x-aws-ec2-metadata-token-ttl-seconds": list(values)}


@pytest.mark.parametrize("values,ttl", [
    (["1"], 1), (["21600"], 21600), ([" 300 "], 300),
    ([], None), (["0"], None), (["21601"], None), (["abc"], None), (["-5"], None),
    (["1.5"], None), (["999999"], None), (["60", "60"], None), ([""], None),
])
def test_ttl_bounds(values, ttl):
    assert parse_ttl(values) == ttl


@pytest.mark.parametrize("values", [[], ["0"], ["21601"], ["text"]])
def test_bad_ttl_is_400(issuer, values):
    assert put_token(issuer, INSTANCE_ID, ttl_headers(*values) if values else {}).status == 400


def test_put_returns_token_and_ttl(issuer):
    answer = put_token(issuer, INSTANCE_ID, ttl_headers("21600"))
    assert answer.status == 200
    assert ("X-aws-ec2-metadata-token-ttl-seconds", "21600") in answer.headers
    assert issuer.remaining(INSTANCE_ID, answer.body.decode()) == 21600


def test_forwarded_put_is_403(issuer):
    headers = {**ttl_headers("60"), "x-forwarded-for": ["10.0.0.9"]}
    assert put_token(issuer, INSTANCE_ID, headers).status == 403


def test_token_expires(issuer, clock):
    token = issuer.issue(INSTANCE_ID, 60)
    clock.now += 59
    assert issuer.remaining(INSTANCE_ID, token) == 1
    clock.now += 1
    assert issuer.remaining(INSTANCE_ID, token) is None


def test_token_is_bound_to_instance_and_secret(issuer, clock):
    token = issuer.issue(INSTANCE_ID, 600)
    assert issuer.remaining(OTHER_ID, token) is None
    assert TokenIssuer(b"t" * 32, clock).remaining(INSTANCE_ID, token) is None


def test_tampered_tokens_fail(issuer):
    token = issuer.issue(INSTANCE_ID, 600)
    flipped = token[:3] + ("A" if token[3] != "A" else "B") + token[4:]
    for bad in (flipped, token[:-1], token + "A", "", "x" * 54, "!" * 54, token[:-2] + "=="):
        assert issuer.remaining(INSTANCE_ID, bad) is None


def test_non_canonical_spelling_of_a_valid_token_fails(issuer):
    # the last character's 2 low bits are padding: flipping them decodes to the same bytes
    token = issuer.issue(INSTANCE_ID, 600)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    twin = token[:-1] + alphabet[last ^ 1]
    assert issuer.remaining(INSTANCE_ID, token) == 600
    assert issuer.remaining(INSTANCE_ID, twin) is None


def test_extending_the_expiry_breaks_the_mac(issuer):
    import base64
    import struct
    token = issuer.issue(INSTANCE_ID, 60)
    raw = base64.urlsafe_b64decode(token + "==")
    forged = struct.pack(">Q", struct.unpack(">Q", raw[:8])[0] + 3600) + raw[8:]
    forged_token = base64.urlsafe_b64encode(forged).rstrip(b"=").decode()
    assert issuer.remaining(INSTANCE_ID, forged_token) is None


def test_short_secret_refused():
    with pytest.raises(ValueError):
        TokenIssuer(b"short")


def test_required_vs_optional(issuer, clock):
    required = MetadataOptions(http_tokens="required")
    optional = MetadataOptions(http_tokens="optional")
    good = {"x-aws-ec2-metadata-token": [issuer.issue(INSTANCE_ID, 100)]}
    bad = {"x-aws-ec2-metadata-token": ["nonsense"]}
    other = {"x-aws-ec2-metadata-token": [issuer.issue(OTHER_ID, 100)]}

    assert isinstance(authorize_get(issuer, INSTANCE_ID, required, {}), Reply)
    assert authorize_get(issuer, INSTANCE_ID, required, {}).status == 401
    assert authorize_get(issuer, INSTANCE_ID, optional, {}) is None
    assert authorize_get(issuer, INSTANCE_ID, required, good) == 100
    assert authorize_get(issuer, INSTANCE_ID, optional, good) == 100
    for options in (required, optional):
        assert authorize_get(issuer, INSTANCE_ID, options, bad).status == 401
        assert authorize_get(issuer, INSTANCE_ID, options, other).status == 401
    clock.now += 100
    assert authorize_get(issuer, INSTANCE_ID, optional, good).status == 401
    two = {"x-aws-ec2-metadata-token": good["x-aws-ec2-metadata-token"] * 2}
    assert authorize_get(issuer, INSTANCE_ID, optional, two).status == 401


def test_rate_limiter_burst_then_rate():
    clock = Clock(0.0)
    limiter = RateLimiter(rate=10, burst=5, clock=clock)
    assert [limiter.allow("a") for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow("b")  # another instance has its own bucket
    clock.now += 0.1  # one token back
    assert limiter.allow("a") and not limiter.allow("a")
    clock.now += 100  # refills to the burst, not beyond
    assert sum(limiter.allow("a") for _ in range(20)) == 5


def test_rate_limiter_table_is_bounded():
    clock = Clock(0.0)
    limiter = RateLimiter(rate=1, burst=1, clock=clock, max_keys=3)
    for key in "abcdef":
        limiter.allow(key)
    assert len(limiter._buckets) <= 3


def test_persistent_secret_survives_a_restart_and_is_private(tmp_path):
    from agent.metadata.tokens import persistent_secret
    path = tmp_path / "state" / "metadata-token.key"
    first = persistent_secret(path)
    assert len(first) == 32 and path.stat().st_mode & 0o077 == 0
    assert persistent_secret(path) == first  # the restarted agent: same secret
    assert persistent_secret(tmp_path / "other.key") != first
    # A token issued before the restart is accepted after it; one of another host is not.
    token = TokenIssuer(first).issue(INSTANCE_ID, 60)
    assert TokenIssuer(persistent_secret(path)).remaining(INSTANCE_ID, token) is not None
    assert TokenIssuer(persistent_secret(tmp_path / "other.key")).remaining(INSTANCE_ID, token) is None
    path.write_bytes(b"short")  # torn by a crash: replaced, never used
    assert len(persistent_secret(path)) == 32 and persistent_secret(path) != first
