"""Secrets: integration keys and API tokens.

Both are 256-bit random strings shown once and stored only as SHA-256
digests. A fast hash is right here (unlike passwords): the inputs carry full
entropy, so there is nothing to brute-force, and lookups by digest stay O(1)
on the ingest hot path. Digests are compared in constant time.

Every secret we issue is ASCII, so a presented credential that is not (a header
with bytes outside ASCII, which HTTP servers hand over as undecodable text) is
refused as UNAUTHENTICATED wherever it is digested or compared, on every face.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from oncall_server.errors import Unauthenticated

KEY_PREFIX_LENGTH = 8
_SCRUB_RE = re.compile(r"(?i)((?:^|[?&;])(?:key|token|routing_key)=)[^&;\s\"]*")
_NOT_ASCII = "credentials must be ASCII text"


def new_secret(prefix: str) -> str:
    """A new secret: ``prefix`` + 43 url-safe characters (256 bits)."""
    return prefix + secrets.token_urlsafe(32)


def credential(presented: str | None) -> str | None:
    """A presented credential as given, or UNAUTHENTICATED if it is not ASCII (no secret we issue is)."""
    if presented is not None and not presented.isascii():
        raise Unauthenticated(_NOT_ASCII)
    return presented


def digest(secret: str) -> str:
    """Hex SHA-256 of a secret, the only form stored; UNAUTHENTICATED for a non-ASCII one."""
    if not secret.isascii():
        raise Unauthenticated(_NOT_ASCII)
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def matches(secret: str, stored_digest: str) -> bool:
    """Constant-time check of a presented secret against a stored digest."""
    return hmac.compare_digest(digest(secret), stored_digest)


def same_secret(presented: str | None, expected: str) -> bool:
    """Constant-time check of a presented secret against a configured one (the Defend service key);
    False for a missing, empty or non-ASCII one."""
    if not presented or not expected or not presented.isascii() or not expected.isascii():
        return False
    return hmac.compare_digest(presented.encode("ascii"), expected.encode("ascii"))


def display_prefix(secret: str) -> str:
    """The first characters, stored so operators can tell keys apart."""
    return secret[:KEY_PREFIX_LENGTH]


def scrub(text: str) -> str:
    """Remove ``key=``/``token=`` values from URLs and query strings.

    Not what the access log relies on: a key can be encoded in ways no pattern lists
    (``%6Bey=``, ``api_key=``, a path segment), so the gateway logs route templates instead
    (:func:`oncall_server.faces.http.gateway.route_of`). Kept for free text that may quote a literal URL.
    """
    return _SCRUB_RE.sub(r"\1[redacted]", text)
