"""The launcher and the dev broker: lifecycle, persistence, packet limit, CLI."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mosquitto.config import BrokerConfig, ConfigError, TlsSettings, render, setting
from mosquitto.launcher import Broker, BrokerError, MosquittoNotFound, find_mosquitto
from mqtt_probe import ProbeError
from protocol.codec import DEFAULT_MAX_PAYLOAD

pytestmark = pytest.mark.broker

TOPIC = "edgeloop/v1/node/n1/samples"


def _config(**changes: object) -> BrokerConfig:
    values: dict = dict(
        port=1883, bind="127.0.0.1", data_dir=Path("/d"), log_file=Path("/d/l"), user="u"
    )
    values.update(changes)
    return BrokerConfig(**values)


def _max_packet_size() -> int:
    (value,) = setting(render(_config()), "max_packet_size")
    return int(value)


# --- config rendering (pure) ---------------------------------------------------------------


def test_dev_config_is_loopback_persistent_and_above_the_client_payload_limit() -> None:
    text = render(_config(port=1999, data_dir=Path("/srv/b"), log_file=Path("/srv/b/log")))
    assert setting(text, "listener") == ["1999 127.0.0.1"]
    assert setting(text, "allow_anonymous") == ["true"]
    assert setting(text, "persistence") == ["true"]
    assert setting(text, "persistence_location") == ["/srv/b/"]
    assert int(setting(text, "autosave_interval")[0]) <= 10
    assert int(setting(text, "max_queued_messages")[0]) >= 10000
    assert _max_packet_size() > DEFAULT_MAX_PAYLOAD
    assert "${" not in text


def test_production_config_requires_tls_identity_and_acl() -> None:
    tls = TlsSettings(
        cafile=Path("/c/ca.crt"),
        certfile=Path("/c/server.crt"),
        keyfile=Path("/c/server.key"),
        acl_file=Path("/c/acl"),
        crlfile=Path("/c/crl.pem"),
    )
    text = render(_config(port=8883, bind="0.0.0.0", tls=tls))
    assert setting(text, "allow_anonymous") == ["false"]
    assert setting(text, "tls_version") == ["tlsv1.2"]
    assert setting(text, "require_certificate") == ["true"]
    assert setting(text, "use_identity_as_username") == ["true"]
    assert setting(text, "acl_file") == ["/c/acl"]
    assert setting(text, "crlfile") == ["/c/crl.pem"]
    assert setting(text, "password_file") == []
    assert setting(text, "max_packet_size") == [str(_max_packet_size())]

    password_tls = TlsSettings(
        tls.cafile, tls.certfile, tls.keyfile, tls.acl_file, password_file=Path("/c/passwd")
    )
    password_mode = render(_config(port=8883, bind="0.0.0.0", tls=password_tls))
    assert setting(password_mode, "require_certificate") == ["false"]
    assert setting(password_mode, "password_file") == ["/c/passwd"]
    assert setting(password_mode, "allow_anonymous") == ["false"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"data_dir": Path("relative")}, "data_dir"),
        ({"port": 70000}, "port"),
        ({"bind": "127.0.0.1 8883"}, "bind"),
        ({"log_file": Path("/a\nlistener 1")}, "log_file"),
    ],
)
def test_bad_config_values_are_refused_by_name(change: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        render(_config(**change))


# --- finding mosquitto ---------------------------------------------------------------------


def test_missing_mosquitto_names_the_package_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EDGELOOP_MOSQUITTO", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("mosquitto.launcher._SEARCH_DIRS", (str(tmp_path),))
    with pytest.raises(MosquittoNotFound, match="apt-get install mosquitto"):
        find_mosquitto()


def test_mosquitto_override_must_be_executable(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGELOOP_MOSQUITTO", str(tmp_path / "nope"))
    with pytest.raises(MosquittoNotFound, match="EDGELOOP_MOSQUITTO"):
        find_mosquitto()


# --- lifecycle -----------------------------------------------------------------------------


def test_dev_broker_delivers_qos1_and_retained(broker: Broker, mqtt_probe) -> None:
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
    sub = mqtt_probe(broker).connect()
    assert sub.subscribe(TOPIC).value == 1
    pub = mqtt_probe(broker).connect()
    assert pub.publish(TOPIC, b"hello").value == 0
    got = sub.expect(TOPIC)
    assert (got.payload, got.qos) == (b"hello", 1)

    assert not pub.publish("edgeloop/v1/node/n1/status", b"online", retain=True).is_failure
    late = mqtt_probe(broker).connect()
    late.subscribe("edgeloop/v1/node/n1/status")
    got = late.expect("edgeloop/v1/node/n1/status")
    assert (got.payload, got.retain) == (b"online", True)


def test_start_failure_reports_the_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = Broker(tmp_path / "b", port=port)
        with pytest.raises(BrokerError, match="Address already in use"):
            broker.start()
        assert not broker.running


def test_stop_kill_and_restart_keep_the_port(tmp_path: Path) -> None:
    with Broker(tmp_path / "b") as broker:
        port, first_pid = broker.port, broker.pid
        broker.restart()
        assert broker.running and broker.port == port and broker.pid != first_pid
        broker.kill()
        assert not broker.running
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        broker.start()
        assert broker.running and broker.port == port
    assert not broker.running


def test_owned_data_dir_is_removed_on_close() -> None:
    with Broker() as broker:
        data_dir = broker.data_dir
        assert broker.log_path.is_file()
    assert not data_dir.exists()


# --- persistence ---------------------------------------------------------------------------


def test_offline_session_backlog_and_retained_survive_a_clean_restart(
    broker: Broker, mqtt_probe
) -> None:
    session = dict(client_id="cloud-manager", clean_start=False, session_expiry=3600)
    cloud = mqtt_probe(broker, **session).connect()
    cloud.subscribe(TOPIC)
    cloud.close()  # offline, session kept by the broker

    node = mqtt_probe(broker).connect()
    for i in range(3):
        assert node.publish(TOPIC, f"report-{i}".encode()).value == 0
    node.publish("edgeloop/v1/node/n1/status", b"online", retain=True)
    node.close()

    broker.restart()  # SIGTERM: mosquitto writes the whole state

    back = mqtt_probe(broker, **session).connect()
    assert back.connack is not None and back.connack.value == 0
    assert [back.expect(TOPIC).payload for _ in range(3)] == [b"report-0", b"report-1", b"report-2"]

    # What a clean stop saved also survives a later kill -9 (only newer changes are at risk).
    back.close()
    broker.kill()
    broker.start()
    reader = mqtt_probe(broker).connect()
    reader.subscribe("edgeloop/v1/node/n1/status")
    assert reader.expect("edgeloop/v1/node/n1/status").payload == b"online"


# --- packet size limit ---------------------------------------------------------------------


def test_broker_refuses_oversize_publish_and_advertises_its_limit(
    broker: Broker, mqtt_probe
) -> None:
    limit = _max_packet_size()
    sub = mqtt_probe(broker).connect()
    sub.subscribe(TOPIC)

    sender = mqtt_probe(broker).connect()
    assert sender.connack_properties.MaximumPacketSize == limit
    assert sender.publish(TOPIC, b"\0" * DEFAULT_MAX_PAYLOAD).value == 0  # the client's own limit
    assert len(sub.expect(TOPIC).payload) == DEFAULT_MAX_PAYLOAD

    with pytest.raises(ProbeError, match="disconnected"):
        sender.publish(TOPIC, b"\0" * limit)
    assert sender.wait_closed()

    # Barrier: a later message arrives, the oversize one never did.
    mqtt_probe(broker).connect().publish(TOPIC, b"after")
    assert sub.expect(TOPIC).payload == b"after"
    assert "oversize" in broker.log_tail(lines=50)


# --- command line --------------------------------------------------------------------------


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"`edgeloop broker` exited early: {process.communicate()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"`edgeloop broker` did not listen on {port}")


@contextlib.contextmanager
def cli_broker(tmp_path: Path, port: int | None = None) -> Iterator[tuple[subprocess.Popen, int]]:
    """``edgeloop broker`` in its own process group (as a terminal runs it); killed if a test
    leaves it running."""
    from edgeloop.ports import free_port

    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "edgeloop", "broker", "--port", str(port),
         "--data", str(tmp_path / "d")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield process, port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_cli_broker_interrupted_while_starting_exits_cleanly(tmp_path: Path) -> None:
    """Ctrl-C the moment mosquitto exists, before it is ready: a clean stop, no traceback."""
    with cli_broker(tmp_path) as (process, _):
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        deadline = time.monotonic() + 20
        while not children.read_text().split():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.001)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err.decode()
    assert b"Traceback" not in err


def test_cli_broker_runs_in_foreground_until_interrupted(tmp_path: Path, mqtt_probe) -> None:
    with cli_broker(tmp_path) as (process, port):
        _wait_for_port(port, process)
        probe = mqtt_probe(("127.0.0.1", port))
        assert probe.connect().subscribe(TOPIC).value == 1
        probe.close()
        # Ctrl-C in a terminal signals the whole foreground group.
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err.decode()
    assert b"running" in out
    assert (tmp_path / "d" / "mosquitto.db").is_file()


def test_kill_9_of_the_cli_broker_takes_mosquitto_along(tmp_path: Path) -> None:
    """No orphan keeps the port: the next ``edgeloop broker`` on it starts."""
    with cli_broker(tmp_path / "first") as (process, port):
        _wait_for_port(port, process)
        (mosquitto_pid,) = map(int, Path(f"/proc/{process.pid}/task/{process.pid}/children")
                               .read_text().split())
        gone = os.pidfd_open(mosquitto_pid)
        try:
            os.kill(process.pid, signal.SIGKILL)  # the parent only, as `kill -9 PID` does
            process.wait()
            readable, _, _ = select.select([gone], [], [], 20)
            assert readable, f"mosquitto (pid {mosquitto_pid}) outlived its parent"
        finally:
            os.close(gone)
    with cli_broker(tmp_path / "second", port) as (process, _):
        _wait_for_port(port, process)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err.decode()
    assert b"Address already in use" not in err


def test_cli_production_without_creds_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgeloop", "broker", "--production", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "--creds" in result.stderr
