"""Secrets: integration keys and API tokens.

Both are 256-bit random strings shown once and stored only as SHA-256
digests. A fast hash is right here (unlike passwords): the inputs carry full
entropy, so there is nothing to brute-force, and lookups by digest stay O(1)
on the ingest hot path. Digests are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

KEY_PREFIX_LENGTH = 8
_SCRUB_RE = re.compile(r"(?i)((?:^|[?&;])(?:key|token|routing_key)=)[^&;\s\"]*")


def new_secret(prefix: str) -> str:
    """A new secret: ``prefix`` + 43 url-safe characters (256 bits)."""
    return prefix + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """Hex SHA-256 of a secret, the only form stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(secret: str, stored_digest: str) -> bool:
    """Constant-time check of a presented secret against a stored digest."""
    return hmac.compare_digest(digest(secret), stored_digest)


def display_prefix(secret: str) -> str:
    """The first characters, stored so operators can tell keys apart."""
    return secret[:KEY_PREFIX_LENGTH]


def scrub(text: str) -> str:
    """Remove ``key=``/``token=`` values from URLs and query strings before logging."""
    return _SCRUB_RE.sub(r"\1[redacted]", text)
