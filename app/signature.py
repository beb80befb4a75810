"""Stripe webhook signatures: `Stripe-Signature: t=<unix time>,v1=<hex hmac>[,v1=...][,v0=...]`.

The signed payload is `"<t>." + raw body`, HMAC-SHA256 with the endpoint secret. We check
every `v1` against every configured secret (rotation) in constant time, and refuse a
timestamp outside the tolerance in either direction: Stripe's own helper only refuses old
ones, but a far-future timestamp is as suspect as a replayed old one.
"""

from __future__ import annotations

import hashlib
import hmac
import time


class SignatureError(Exception):
    """The Stripe-Signature header is missing, malformed, stale or does not match."""


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """Build a Stripe-Signature header value (for tests, benchmarks and outbound webhooks)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _parse(header: str) -> tuple[int, list[bytes]]:
    timestamp = None
    signatures = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError("Stripe-Signature has a malformed timestamp") from None
        elif key == "v1":
            signatures.append(value.encode())
    if timestamp is None:
        raise SignatureError("Stripe-Signature has no timestamp")
    if not signatures:
        raise SignatureError("Stripe-Signature has no v1 signature")
    return timestamp, signatures


def verify(body: bytes, header: str | None, secrets: tuple[str, ...], tolerance: int, now: float | None = None) -> None:
    """Raise SignatureError unless `header` signs `body` with one of `secrets` within `tolerance`."""
    if not header:
        raise SignatureError("missing Stripe-Signature header")
    timestamp, signatures = _parse(header)
    now = time.time() if now is None else now
    # Integer arithmetic: a timestamp of hundreds of digits must not overflow a float.
    if abs(int(now) - timestamp) > tolerance:
        raise SignatureError("Stripe-Signature timestamp is outside the tolerance")
    signed = f"{timestamp}.".encode() + body
    matched = False
    for secret in secrets:
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest().encode()
        for candidate in signatures:
            # No early exit: every comparison runs, so timing says nothing about which matched.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("no Stripe-Signature matches the payload with a configured secret")
