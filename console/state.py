"""What the console keeps across restarts, in one small SQLite file (``console.sqlite`` in the
state directory): who skipped or flagged which hard example, and the key that signs session
cookies.

Saved examples need no row here: the cloud marks them labelled. Skips and "difficult" flags
exist only in the console, so without this file a restart would put every skipped example back
at the front of its queue and every flagged one back in the queue. The signing key lives here so
that a restart does not log everyone out; ``edgeloop console rotate-key`` (or deleting the file)
makes a new one, which ends every session.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from pathlib import Path

from console.review import Ledger

STATE_FILE = "console.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS skips (user TEXT NOT NULL, example TEXT NOT NULL,
                                  seq INTEGER NOT NULL, PRIMARY KEY (user, example));
CREATE TABLE IF NOT EXISTS difficult (example TEXT PRIMARY KEY, user TEXT NOT NULL,
                                      at REAL NOT NULL);
"""


class ConsoleState:
    """The state file, opened once at start; every write is committed before the request
    answers, so what a person was told is done survives a crash."""

    def __init__(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / STATE_FILE
        new = not self.path.exists()
        self.db = sqlite3.connect(self.path, isolation_level=None)
        if new:  # the signing key is in here: owner-readable only
            os.chmod(self.path, 0o600)
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- the session signing key --

    def secret(self) -> str:
        """The key that signs session cookies, made the first time it is asked for."""
        row = self.db.execute("SELECT value FROM settings WHERE name = 'secret'").fetchone()
        if row:
            return str(row[0])
        return self.rotate_secret()

    def rotate_secret(self) -> str:
        """A new signing key: every session signed with the old one is refused from now on."""
        value = secrets.token_urlsafe(32)
        self.db.execute("INSERT OR REPLACE INTO settings (name, value) VALUES ('secret', ?)",
                        (value,))
        return value

    # -- skips and flags --

    def ledger(self) -> Ledger:
        """A ledger holding the skips and flags stored here (nobody is saving anything yet)."""
        ledger = Ledger()
        for user, example in self.db.execute("SELECT user, example FROM skips ORDER BY seq"):
            ledger.skip(example, user)
        for example, user in self.db.execute("SELECT example, user FROM difficult"):
            ledger.mark_difficult(example, user, True)
        return ledger

    def record_skip(self, example: str, user: str) -> None:
        """``example`` goes to the end of ``user``'s queue (as :meth:`Ledger.skip` says)."""
        self.db.execute(
            "INSERT OR REPLACE INTO skips (user, example, seq) VALUES "
            "(?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM skips))", (user, example))

    def record_difficult(self, example: str, user: str, difficult: bool) -> None:
        if difficult:
            self.db.execute("INSERT OR REPLACE INTO difficult (example, user, at) VALUES "
                            "(?, ?, ?)", (example, user, time.time()))
        else:
            self.db.execute("DELETE FROM difficult WHERE example = ?", (example,))
