"""Who may use the console, and where it may listen.

The console changes the training data, so every page but the login needs a logged-in session.
Passwords live in a file of ``user:scrypt$n$r$p$salt$hash`` lines written by ``edgeloop console
passwd`` (scrypt from the standard library: no native dependency, memory-hard, and the
parameters travel with each hash so they can be raised later without breaking old lines).

Everything here is pure or reads one small file: the web layer (:mod:`console.app`) decides
what to do with the answers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgeloop.durable import write_atomically

#: scrypt cost: 2**14 x 8 x 1 takes ~50 ms and 16 MiB, the usual interactive-login setting.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SCHEME = "scrypt"
#: Names become part of the file's ``user:hash`` lines and of log lines: keep them plain.
MAX_USER_LEN = 64
MIN_PASSWORD_LEN = 8


class PasswordFileError(ValueError):
    """The password file cannot be used; the message names the file and the line."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$hash``: what a password file stores for a password."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R,
                            p=SCRYPT_P, dklen=32)
    return f"{SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(stored: str, password: str) -> bool:
    """Whether ``password`` matches a stored hash; a malformed hash matches nothing."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != SCHEME:
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt, validate=True),
                                n=int(n), r=int(r), p=int(p), dklen=len(expected),
                                maxmem=256 * 2**20)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def check_user_name(user: str) -> str:
    """The name as it is stored; ``ValueError`` says what is wrong with it."""
    if not user or len(user) > MAX_USER_LEN:
        raise ValueError(f"user name must be 1 to {MAX_USER_LEN} characters")
    if not all(c.isalnum() or c in "._-@" for c in user):
        raise ValueError(f"user name {user!r}: use letters, digits and . _ - @ only")
    return user


def read_password_file(path: Path) -> dict[str, str]:
    """user -> stored hash. Blank lines and ``#`` comments are skipped; anything else that is
    not ``user:scrypt$...`` is an error naming its line, so a typo never locks everyone out
    silently."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PasswordFileError(f"{path}: no such password file; create one with "
                                "`edgeloop console passwd USER --file PATH`") from None
    except OSError as exc:
        raise PasswordFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    users: dict[str, str] = {}
    for line_no, user, sep, stored in _entries(text):
        if not sep or not stored.startswith(f"{SCHEME}$") or stored.count("$") != 5:
            raise PasswordFileError(f"{path}:{line_no}: expected user:{SCHEME}$..., as written "
                                    "by `edgeloop console passwd`")
        users[user] = stored
    return users


def set_password(path: Path, user: str, password: str) -> bool:
    """Add or replace ``user``'s line (the file is created owner-readable only); True when the
    user is new."""
    check_user_name(user)
    if len(password) < MIN_PASSWORD_LEN:
        raise ValueError(f"password must be at least {MIN_PASSWORD_LEN} characters")
    path = Path(path)
    users = read_password_file(path) if path.exists() else {}
    new = user not in users
    users[user] = hash_password(password)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{name}:{stored}\n" for name, stored in users.items())
    write_atomically(path, text.encode("utf-8"))
    os.chmod(path, 0o600)
    return new


@dataclass(frozen=True)
class Users:
    """The accounts the console accepts (read once at start)."""

    hashes: dict[str, str]

    def check(self, user: str, password: str) -> bool:
        stored = self.hashes.get(user)
        if stored is None:  # same cost as a wrong password: no hint that the name exists
            verify_password(_DUMMY_HASH, password)
            return False
        return verify_password(stored, password)


_DUMMY_HASH = hash_password("no such user", salt=b"\0" * 16)


def new_token() -> str:
    """A per-session secret for the cross-site-request check."""
    return secrets.token_urlsafe(32)


def tokens_match(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_problem(host: str, tls: bool, insecure_bind: bool) -> str | None:
    """Why the console may not listen on ``host``, or None.

    Passwords and session cookies must not cross a network in clear text: beyond loopback the
    console needs TLS, or an explicit ``--insecure-bind`` (e.g. behind a TLS-terminating proxy).
    """
    if is_loopback(host) or tls or insecure_bind:
        return None
    return (f"--host {host} is reachable from other machines: give --tls-cert and --tls-key, "
            "or --insecure-bind if a TLS proxy stands in front (passwords and session cookies "
            "would otherwise travel in clear text)")


# --- token files -------------------------------------------------------------------------------

TOKEN_SCHEME = "sha256"


class TokenFileError(ValueError):
    """The token file cannot be used; the message names the file and the line."""


def token_fingerprint(token: str) -> str:
    """What a token file stores for a token: its SHA-256. A token is 32 random bytes, so a fast
    hash is enough (no password to guess); the file never holds the token itself."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _entries(text: str) -> Iterator[tuple[int, str, str, str]]:
    """``(line number, user, ":" or "", stored)`` of each line of an account file, skipping
    blank lines and ``#`` comments (the password and token files share the layout)."""
    for line_no, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            user, sep, stored = line.partition(":")
            yield line_no, user, sep, stored


def read_token_file(path: Path) -> dict[str, str]:
    """user -> token fingerprint, from ``user:sha256$<hex>`` lines (blank lines and ``#``
    comments skipped; anything else is an error naming its line). A missing file holds no
    tokens: every one was revoked, or none was made yet."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    tokens: dict[str, str] = {}
    for line_no, user, _, stored in _entries(text):
        scheme, _, digest = stored.partition("$")
        if scheme != TOKEN_SCHEME or len(digest) != 64 or not _is_hex(digest):
            raise TokenFileError(f"{path}:{line_no}: expected user:{TOKEN_SCHEME}$<64 hex "
                                 "digits>, as written by `edgeloop console token`")
        tokens[user] = digest
    return tokens


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _write_token_file(path: Path, tokens: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{user}:{TOKEN_SCHEME}${digest}\n" for user, digest in tokens.items())
    write_atomically(path, text.encode("utf-8"))
    os.chmod(path, 0o600)


def issue_token(path: Path, user: str) -> str:
    """A fresh token for ``user``, whose fingerprint replaces the user's previous one in the
    file (so the old token stops working). The token is returned once and stored nowhere."""
    check_user_name(user)
    path = Path(path)
    tokens = read_token_file(path)
    token = secrets.token_urlsafe(32)
    tokens[user] = token_fingerprint(token)
    _write_token_file(path, tokens)
    return token


def revoke_token(path: Path, user: str) -> bool:
    """Remove ``user``'s token; True when there was one."""
    path = Path(path)
    tokens = read_token_file(path)
    if tokens.pop(user, None) is None:
        return False
    _write_token_file(path, tokens)
    return True


class TokenFile:
    """The token file as the running console sees it: read again whenever it changed on disk,
    so a token issued or revoked while the console runs counts at once, sessions included."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int, int] | None = None
        self._tokens: dict[str, str] = {}
        self.tokens()  # a malformed file is an error at start, not at the first login

    def tokens(self) -> dict[str, str]:
        try:
            stat = self.path.stat()
            # a rewrite is a new file (written aside, renamed): the inode says it changed even
            # when the size and the clock's tick are the same
            seen: tuple[int, int, int] | None = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            seen = None
        if seen != self._seen or seen is None:
            self._tokens = read_token_file(self.path) if seen is not None else {}
            self._seen = seen
        return self._tokens

    def user_of(self, token: str) -> tuple[str, str] | None:
        """(user, fingerprint) of a valid token, or None; every line is compared, so the time
        taken does not say which user a near-miss belongs to."""
        given = token_fingerprint(token)
        found = None
        for user, digest in self.tokens().items():
            if hmac.compare_digest(digest, given):
                found = (user, digest)
        return found

    def holds(self, user: str, fingerprint: str) -> bool:
        """Whether ``user``'s token is still this one (not revoked or replaced)."""
        current = self.tokens().get(user)
        return current is not None and hmac.compare_digest(current, fingerprint)
