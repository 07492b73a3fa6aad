"""A PostgreSQL server of its own, for the tests, the benchmarks and a trial of ``--store``.

:class:`PostgresServer` runs the system's PostgreSQL (Debian's ``postgresql`` package keeps its
programs in ``/usr/lib/postgresql/VERSION/bin``, off ``PATH``) on a free loopback port, with its
cluster in a new temporary directory: ``initdb``, then ``pg_ctl start``; :meth:`stop` stops it
and removes the directory. Clients connect as ``edgeloop`` without a password (``trust`` on
loopback only): a throwaway server, never a production one.

PostgreSQL refuses to run as root. Run by root, the server runs as the ``postgres`` system user
that the Debian package creates (its directory is handed to that user); without such a user,
:class:`PostgresUnavailable` says so.
"""

from __future__ import annotations

import atexit
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from edgeloop.ports import free_port

log = logging.getLogger(__name__)

#: Set to a directory holding initdb and pg_ctl to use another build than the system's.
BIN_ENV = "EDGELOOP_PG_BIN"
SUPERUSER = "edgeloop"
#: the system user the server runs as when started by root
SERVICE_USER = "postgres"
_SEARCH_GLOB = "/usr/lib/postgresql/*/bin"
START_TIMEOUT_S = 60


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here (not installed, or no user to run it as)."""


def find_bin_dir() -> Path:
    """The directory of initdb and pg_ctl: ``$EDGELOOP_PG_BIN``, ``PATH``, then the newest
    of Debian's versioned directories."""
    if os.environ.get(BIN_ENV):
        return Path(os.environ[BIN_ENV])
    on_path = shutil.which("initdb")
    if on_path:  # often a link into the versioned directory, which has the other programs
        return Path(on_path).resolve().parent
    found = sorted(Path("/").glob(_SEARCH_GLOB.lstrip("/")),
                   key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    found = [p for p in found if (p / "initdb").exists()]
    if not found:
        raise PostgresUnavailable("PostgreSQL is not installed: no initdb on PATH nor in "
                                  f"{_SEARCH_GLOB} (Debian: apt-get install postgresql)")
    return found[-1]


def _service_account() -> pwd.struct_passwd | None:
    """The account to run the server as: None for the current one, unless that is root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise PostgresUnavailable(f"PostgreSQL cannot run as root and there is no "
                                  f"{SERVICE_USER!r} user to run it as") from None


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, on a free loopback port."""

    def __init__(self, *, durable: bool = True) -> None:
        #: False: no fsync at all (tests, where a crash of the machine loses nothing of value);
        #: a benchmark keeps it True, so that commits cost what they cost in production
        self.durable = durable
        self.bin_dir = find_bin_dir()
        self.account = _service_account()
        self.port = 0
        self.directory: Path | None = None
        self._created = 0

    @property
    def data_dir(self) -> Path:
        assert self.directory is not None, "the server is not started"
        return self.directory / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        """One of PostgreSQL's programs, as the server's account; its output in the error."""
        extra = {} if self.account is None else {"user": self.account.pw_uid,
                                                 "group": self.account.pw_gid}
        done = subprocess.run([str(self.bin_dir / args[0]), *args[1:]], capture_output=True,
                              text=True, cwd=self.directory, **extra)  # type: ignore[call-overload]
        if done.returncode != 0:
            raise PostgresUnavailable(f"{args[0]} failed ({done.returncode}): "
                                      f"{(done.stderr or done.stdout).strip()}")

    def start(self) -> PostgresServer:
        self.directory = Path(tempfile.mkdtemp(prefix="edgeloop-postgres-"))
        if self.account is not None:
            os.chown(self.directory, self.account.pw_uid, self.account.pw_gid)
        self.port = free_port()
        self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                  "-E", "UTF8", "--no-sync")
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.directory}")
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.directory / "server.log"),
                  "-o", options, "-w", "-t", str(START_TIMEOUT_S), "start")
        atexit.register(self.stop)
        log.info("PostgreSQL on port %d in %s", self.port, self.directory)
        return self

    def create_database(self, name: str | None = None) -> str:
        """A new empty database (by default named ``db_1``, ``db_2``...); returns its URL."""
        if name is None:
            self._created += 1
            name = f"db_{self._created}"
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name)
        return self.url(name)

    def stop(self) -> None:
        if self.directory is None:
            return
        atexit.unregister(self.stop)
        try:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        except PostgresUnavailable:
            log.warning("PostgreSQL in %s did not stop cleanly", self.directory, exc_info=True)
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
