"""How raw API tokens become what is stored: a non-secret prefix and a SHA-256 digest."""

from __future__ import annotations

import hashlib
import secrets

# The first characters of a token, stored in clear so validation looks up a
# handful of rows by index and then compares digests in constant time. With
# 43-character tokens the 8 stored characters leave 208 secret bits.
PREFIX_LENGTH = 8


def new_raw_token() -> str:
    """256 random bits, URL-safe: what create_token and the admin hand out."""
    return secrets.token_urlsafe(32)


def token_prefix(raw: str) -> str:
    return raw[:PREFIX_LENGTH]


def token_digest(raw: str) -> str:
    # A fast hash is right here, unlike for passwords: tokens are 256-bit
    # random strings, so there is nothing to brute-force that a slow hash
    # (PBKDF2, argon2) would protect, and validation runs on every login.
    # surrogatepass: a JSON string may carry lone surrogates; they must hash,
    # not raise.
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()
