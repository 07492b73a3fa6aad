"""mosquitto password-file entries, without needing the ``mosquitto_passwd`` tool.

mosquitto 2.0 reads ``user:$7$<iterations>$<base64 salt>$<base64 hash>`` lines, the hash being
PBKDF2-HMAC-SHA512 of the password. Writing them here keeps credential generation a pure-Python
step that behaves the same on every machine, and lets a rerun tell whether an entry still matches
its password (so an unchanged identity keeps an unchanged line).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping

#: PBKDF2 rounds (mosquitto_passwd's own default is 101; each login costs a few ms at 10 000).
ITERATIONS = 10_000
_SALT_BYTES = 12


def hash_password(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """A mosquitto 2.0 password-file hash: ``$7$<iterations>$<b64 salt>$<b64 PBKDF2-SHA512>``."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``hashed`` (a ``$7$`` entry) was made from ``password``."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return hmac.compare_digest(digest, expected)


def parse_passwd(text: str) -> dict[str, str]:
    """``{user: hash}`` from password-file text; lines without ``user:`` are skipped."""
    entries: dict[str, str] = {}
    for line in text.splitlines():
        user, sep, hashed = line.partition(":")
        if sep and user:
            entries[user] = hashed
    return entries


def format_passwd(entries: Mapping[str, str]) -> str:
    return "".join(f"{user}:{hashed}\n" for user, hashed in entries.items())


def new_password() -> str:
    return secrets.token_urlsafe(24)
