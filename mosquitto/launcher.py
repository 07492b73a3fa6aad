"""Start, stop and restart a real mosquitto broker, for tests, the demo and ``edgeloop broker``.

A :class:`Broker` owns one mosquitto process, its rendered config, its data directory
(persistence) and its log. It keeps its port across :meth:`Broker.restart` so that clients can
reconnect to the same address and persisted sessions are exercised for real.

On Linux mosquitto dies with the process that started it (``PR_SET_PDEATHSIG``): a ``kill -9``
of ``edgeloop broker`` (or of a test run) takes the broker along instead of leaving it holding
the port, and the next start works.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from edgeloop.ports import free_port
from mosquitto.config import BrokerConfig, TlsSettings, render
from mosquitto.creds import Credentials, load_credentials

log = logging.getLogger(__name__)

#: Where distributions put the broker when it is not on ``PATH`` (Debian: /usr/sbin).
_SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin", "/opt/homebrew/sbin")
#: Set to the mosquitto executable to use another build than the one found on the system.
EXECUTABLE_ENV = "EDGELOOP_MOSQUITTO"
DEV_PORT = 1883
TLS_PORT = 8883
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
CONFIG_NAME = "mosquitto.conf"
LOG_NAME = "mosquitto.log"
#: mosquitto logs "mosquitto version X running" once all its listeners are open.
_RUNNING_MARK = re.compile(rb"mosquitto version \S+ running")

_running: weakref.WeakSet[Broker] = weakref.WeakSet()


_PR_SET_PDEATHSIG = 1


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies, or None where
    that cannot be had: not Linux, or not the main thread (the signal follows the thread that
    forked, and a worker thread may end long before the process)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above: go too
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


class BrokerError(RuntimeError):
    """The broker could not be started or stopped; the message carries the log's tail."""


class MosquittoNotFound(BrokerError):
    """No mosquitto executable on this machine."""


def find_mosquitto() -> Path:
    """The mosquitto executable: ``$EDGELOOP_MOSQUITTO``, else ``PATH``, else the sbin dirs."""
    override = os.environ.get(EXECUTABLE_ENV)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise MosquittoNotFound(f"{EXECUTABLE_ENV}={override}: not an executable file")
        return path
    found = shutil.which("mosquitto") or shutil.which(
        "mosquitto", path=os.pathsep.join(_SEARCH_DIRS)
    )
    if found is None:
        raise MosquittoNotFound(
            "mosquitto is not installed (looked on PATH and in "
            f"{', '.join(_SEARCH_DIRS)}); install it with `sudo apt-get install mosquitto` "
            f"(or set {EXECUTABLE_ENV} to its path)"
        )
    return Path(found)


def _current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _connect_host(bind: str) -> str:
    """The address a local client uses to reach a listener bound to ``bind``."""
    if bind in ("0.0.0.0", ""):
        return "127.0.0.1"
    if bind == "::":
        return "::1"
    return bind


class Broker:
    """One mosquitto process: dev (loopback, anonymous) or production (TLS, identities, ACL).

    Production mode is chosen by passing ``credentials``; ``password_auth`` then switches the
    identity from the client certificate to user name + password. Usable as a (sync) context
    manager, also from async tests: starting takes a few milliseconds.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        credentials: Credentials | None = None,
        password_auth: bool = False,
        port: int | None = None,
        bind: str = "127.0.0.1",
        extra_config: Sequence[str] = (),
        executable: Path | None = None,
    ) -> None:
        if password_auth and credentials is None:
            raise BrokerError("password_auth needs credentials (production mode)")
        self._tls = (
            TlsSettings.from_credentials(credentials, password_auth)
            if credentials is not None
            else None
        )
        self.credentials = credentials
        self._owns_data_dir = data_dir is None
        self._data_dir = (
            Path(tempfile.mkdtemp(prefix="edgeloop-broker-"))
            if data_dir is None
            else Path(data_dir).absolute()
        )
        self._port = port
        self._bind = bind
        self._extra = tuple(extra_config)
        self._executable = executable
        self._process: subprocess.Popen[bytes] | None = None

    # --- properties -----------------------------------------------------------------------

    @property
    def production(self) -> bool:
        return self._tls is not None

    @property
    def host(self) -> str:
        return _connect_host(self._bind)

    @property
    def port(self) -> int:
        if self._port is None:
            raise BrokerError("the broker has no port yet: start it first")
        return self._port

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.production else "mqtt"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def log_path(self) -> Path:
        return self._data_dir / LOG_NAME

    @property
    def config_path(self) -> Path:
        return self._data_dir / CONFIG_NAME

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> Broker:
        """Start mosquitto and return once it listens."""
        if self.running:
            return self
        executable = self._executable or find_mosquitto()
        self._data_dir.mkdir(parents=True, exist_ok=True)
        # An auto-chosen port can be taken between probing and binding: try a few others then.
        # A given port, or the one kept for a restart, is used as is.
        attempts = 1 if self._port is not None else 5
        for attempt in range(attempts):
            if self._port is None:
                self._port = free_port(self.host)
            try:
                self._spawn(executable)
                return self
            except BrokerError as exc:
                if attempt + 1 < attempts and "Address already in use" in str(exc):
                    self._port = None
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _write_config(self, extra: Sequence[str] = ()) -> None:
        config = BrokerConfig(
            port=self.port,
            bind=self._bind,
            data_dir=self._data_dir,
            log_file=self.log_path,
            user=_current_user(),
            tls=self._tls,
            extra_lines=(*self._extra, *extra),
        )
        self.config_path.write_text(render(config))

    def _spawn(self, executable: Path, foreground: bool = False, extra: Sequence[str] = ()) -> None:
        self._write_config(extra)
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = [str(executable), "-c", str(self.config_path)]
        if foreground:
            # Same terminal and process group: Ctrl-C reaches mosquitto, which saves and exits.
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                             preexec_fn=_die_with_parent_hook())
        else:
            # Errors mosquitto prints before it opens its log file go to the same file.
            with open(self.log_path, "ab") as log_file:
                self._process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    start_new_session=True,
                    preexec_fn=_die_with_parent_hook(),
                )
        _running.add(self)
        self._wait_ready(log_start)

    def _wait_ready(self, log_start: int) -> None:
        """Return once this process listens: its log says "running", printed after every
        listener is bound. (A TCP probe could be answered by another program holding the port,
        and leaves a failed-handshake line in a TLS broker's log.)"""
        deadline = time.monotonic() + START_TIMEOUT
        delay = 0.002
        while True:
            assert self._process is not None
            code = self._process.poll()
            if code is not None:
                self._process = None
                _running.discard(self)
                raise BrokerError(
                    f"mosquitto exited with code {code} while starting on port {self._port}; "
                    f"config {self.config_path}, log {self.log_path}:\n"
                    f"{self.log_tail(since=log_start)}"
                )
            if self._says_running(log_start):
                return
            if time.monotonic() > deadline:
                self._terminate(signal.SIGKILL)
                raise BrokerError(
                    f"mosquitto did not accept connections on {self.host}:{self.port} within "
                    f"{START_TIMEOUT:.0f} s; log {self.log_path}:\n{self.log_tail(since=log_start)}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _says_running(self, log_start: int) -> bool:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(log_start)
                return _RUNNING_MARK.search(fh.read()) is not None
        except FileNotFoundError:
            return False

    def _terminate(self, sig: signal.Signals, timeout: float = STOP_TIMEOUT) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("mosquitto (pid %d) ignored %s; killing it", process.pid, sig.name)
                process.kill()
                process.wait()
        self._process = None
        _running.discard(self)

    def stop(self) -> None:
        """Stop cleanly: mosquitto writes its persistence file on SIGTERM."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """Kill -9, as a crash would: only the last autosave (every 5 s) survives."""
        self._terminate(signal.SIGKILL)

    def restart(self) -> Broker:
        """Stop (cleanly, if still running) and start again on the same port and data dir."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and remove the data directory if this broker created it."""
        self.stop()
        if self._owns_data_dir:
            shutil.rmtree(self._data_dir, ignore_errors=True)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        port = self._port if self._port is not None else "?"
        mode = "production" if self.production else "dev"
        return f"<Broker {mode} port={port} {state} data_dir={self._data_dir}>"

    # --- diagnostics ----------------------------------------------------------------------

    def log_tail(self, lines: int = 30, since: int = 0) -> str:
        """The last ``lines`` lines of the log written after byte offset ``since``."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(since)
                text = fh.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"

    # --- foreground -----------------------------------------------------------------------

    def run_foreground(self) -> int:
        """Run in this terminal until Ctrl-C or SIGTERM, logging to stdout and the log file.

        Ctrl-C reaches mosquitto too (same process group), which saves and exits; this process
        only waits for it. A Ctrl-C that comes while mosquitto is still starting, or a SIGINT
        sent to this process alone, is forwarded, so it is never lost nor a traceback.
        """
        if self._port is None:
            self._port = TLS_PORT if self.production else DEV_PORT
        executable = self._executable or find_mosquitto()
        self._data_dir.mkdir(parents=True, exist_ok=True)
        interrupted = False

        def on_sigint(*_: object) -> None:
            nonlocal interrupted
            interrupted = True
            self._forward(signal.SIGINT)

        previous_int = signal.signal(signal.SIGINT, on_sigint)
        previous_term = signal.signal(signal.SIGTERM, lambda *_: self._forward(signal.SIGTERM))
        try:
            try:
                self._spawn(executable, foreground=True, extra=("log_dest stdout",))
            except BrokerError:
                if interrupted:  # stopped while starting: what was asked
                    return 0
                raise
            log.info("listening: %s (bound to %s)", self.url, self._bind)
            if interrupted:  # before mosquitto could have received it
                self._forward(signal.SIGINT)
            assert self._process is not None
            return self._process.wait()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)
            self._terminate(signal.SIGTERM)

    def _forward(self, sig: signal.Signals) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(sig)


def run_foreground(
    *,
    production: bool = False,
    port: int | None = None,
    creds_dir: Path | None = None,
    data_dir: Path | None = None,
    password_auth: bool = False,
    bind: str | None = None,
) -> int:
    """``edgeloop broker``: a dev broker on loopback, or the production broker on all interfaces."""
    credentials = None
    if production:
        if creds_dir is None:
            raise BrokerError("--production needs --creds DIR (made by `edgeloop creds`)")
        credentials = load_credentials(creds_dir)
    elif password_auth:
        raise BrokerError("--password applies to --production only")
    if production and os.geteuid() == 0:
        log.warning("running the production broker as root; prefer an unprivileged user")
    default_data = Path("edgeloop-broker-data")
    broker = Broker(
        data_dir if data_dir is not None else default_data,
        credentials=credentials,
        password_auth=password_auth,
        port=port,
        bind=bind if bind is not None else ("0.0.0.0" if production else "127.0.0.1"),
    )
    log.info(
        "%s broker, data in %s; Ctrl-C stops it",
        "production" if production else "dev",
        broker.data_dir,
    )
    return broker.run_foreground()


@atexit.register
def _kill_leftovers() -> None:
    """A test that dies without its fixture's teardown must not leave brokers behind."""
    for broker in list(_running):
        broker.kill()
