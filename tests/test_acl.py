"""Production security: generated ACL, credentials, and what the real TLS broker lets through."""

from __future__ import annotations

import contextlib
import queue
import shutil
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from paho.mqtt.reasoncodes import ReasonCode

from mosquitto.acl import build_acl, node_rules, shared_rules
from mosquitto.creds import (
    ClientCredentials,
    Credentials,
    CredentialsError,
    generate_credentials,
    load_credentials,
    revoke_identity,
)
from mosquitto.passwords import hash_password, verify_password
from mosquitto.launcher import Broker
from protocol import topics
from protocol.topics import NODE_TOPICS, Direction, Kind

NOT_AUTHORIZED = 0x87


def _topic(kind: Kind, node: str) -> str:
    return topics.node_topic(kind, node, task="t1")


# --- the ACL text (pure) -------------------------------------------------------------------


def test_acl_has_one_pattern_per_node_topic_in_its_direction() -> None:
    acl = build_acl("cloud")
    patterns = [line.split() for line in acl.splitlines()
                if line.startswith("pattern ") and "%u" in line]
    assert len(patterns) == len(NODE_TOPICS)
    for spec, (_, access, pattern) in zip(NODE_TOPICS, patterns, strict=True):
        assert access == ("write" if spec.direction is Direction.UP else "read")
        assert pattern == f"{topics.ROOT}/node/%u/" + spec.path.replace("{task}", "+")
    assert "readwrite" not in {access for access, _ in node_rules()}
    assert acl.splitlines()[-2:] == ["user cloud", "topic readwrite #"]


def test_acl_lets_nodes_only_read_the_shared_model_topic() -> None:
    acl = build_acl("cloud")
    shared = [line.split() for line in acl.splitlines()
              if line.startswith("pattern ") and "%u" not in line]
    assert shared == [["pattern", "read", f"{topics.ROOT}/models/+"]]
    assert shared_rules() == [("read", topics.models_filter())]


def test_acl_refuses_a_cloud_name_that_is_not_a_topic_level() -> None:
    with pytest.raises(ValueError, match="cloud identity"):
        build_acl("cloud/#")


# --- passwords -----------------------------------------------------------------------------


def test_password_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed")
    passwd = tmp_path / "passwd"
    passwd.touch()
    subprocess.run([tool, "-b", str(passwd), "alice", "s3cret"], check=True)
    hashed = passwd.read_text().strip().split(":", 1)[1]
    assert hashed.startswith("$7$")
    assert verify_password("s3cret", hashed)
    assert not verify_password("S3cret", hashed)
    ours = hash_password("s3cret")
    assert verify_password("s3cret", ours) and not verify_password("other", ours)
    assert not verify_password("s3cret", "$6$not-our-format")


# --- credentials ---------------------------------------------------------------------------


def _cn(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value


def test_credentials_layout_modes_and_identities(production_credentials: Credentials) -> None:
    creds = production_credentials
    assert creds.nodes == ["node-a", "node-b"] and creds.cloud == "cloud"
    assert creds.acl.read_text() == build_acl("cloud")
    for name in ("cloud", "node-a", "node-b"):
        client = creds.client(name)
        assert _cn(client.cert) == name == client.username
        assert client.password
        assert stat.S_IMODE(client.key.stat().st_mode) == 0o600
        assert client.ca is not None and client.ca.read_bytes() == creds.ca.read_bytes()
    for secret in (creds.ca_key, creds.server_key, creds.passwd):
        assert secret is not None and stat.S_IMODE(secret.stat().st_mode) == 0o600
    san = (
        x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "::1"}
    with pytest.raises(CredentialsError, match="node-z"):
        creds.client("node-z")


def test_rerun_adds_nodes_and_keeps_the_ca_and_existing_certificates(tmp_path: Path) -> None:
    first = generate_credentials(tmp_path, ["node-a"])
    ca, cert_a = first.ca.read_bytes(), first.client("node-a").cert.read_bytes()
    server = first.server_cert.read_bytes()

    second = generate_credentials(tmp_path, ["node-c"], passwords=True)
    assert second.nodes == ["node-a", "node-c"]
    assert second.ca.read_bytes() == ca
    assert second.client("node-a").cert.read_bytes() == cert_a
    assert second.server_cert.read_bytes() == server
    assert second.client("node-a").password and second.client("node-c").password
    assert load_credentials(tmp_path).nodes == ["node-a", "node-c"]

    passwd = second.passwd.read_text()
    third = generate_credentials(tmp_path, [], server_names=["broker.example.org", "10.0.0.7"])
    assert third.passwd is not None and third.passwd.read_text() == passwd  # nothing changed
    san = (
        x509.load_pem_x509_certificate(third.server_cert.read_bytes())
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert "broker.example.org" in san.get_values_for_type(x509.DNSName)
    assert "10.0.0.7" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert third.ca.read_bytes() == ca


@pytest.mark.parametrize(
    ("nodes", "cloud", "message"),
    [
        (["node/a"], "cloud", "node"),
        (["cloud"], "cloud", "cloud identity"),
        (["node-a"], "+", "cloud identity"),
    ],
)
def test_bad_identity_names_are_refused(tmp_path: Path, nodes, cloud, message) -> None:
    with pytest.raises(CredentialsError, match=message):
        generate_credentials(tmp_path, nodes, cloud=cloud)


def test_rerun_with_another_cloud_name_is_refused(tmp_path: Path) -> None:
    generate_credentials(tmp_path, ["node-a"])
    with pytest.raises(CredentialsError, match="--cloud-name cloud"):
        generate_credentials(tmp_path, ["node-b"], cloud="control")


def test_lost_ca_key_is_an_error_not_a_new_ca(tmp_path: Path) -> None:
    generate_credentials(tmp_path, ["node-a"])
    (tmp_path / "ca.key").unlink()
    with pytest.raises(CredentialsError, match="ca.key"):
        generate_credentials(tmp_path, ["node-b"])


def test_identity_bundle_loads_on_its_own(
    production_credentials: Credentials, tmp_path: Path
) -> None:
    bundle = tmp_path / "on-the-node"
    shutil.copytree(production_credentials.directory / "identities" / "node-a", bundle)
    loaded = ClientCredentials.load(bundle)
    assert (loaded.name, loaded.username) == ("node-a", "node-a")
    assert loaded.password == production_credentials.client("node-a").password
    (bundle / "client.key").unlink()
    with pytest.raises(CredentialsError, match="client.key"):
        ClientCredentials.load(bundle)


def test_cli_creds_creates_and_extends(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgeloop", "creds", "--out", str(tmp_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    first = run("--node", "cam-1", "--node", "cam-2")
    assert first.returncode == 0, first.stderr
    assert "cam-1, cam-2" in first.stdout
    assert run("--node", "cam-3", "--password").returncode == 0
    creds = load_credentials(tmp_path)
    assert creds.nodes == ["cam-1", "cam-2", "cam-3"] and creds.passwd is not None
    bad = run("--node", "bad name")
    assert bad.returncode == 1 and "bad name" in bad.stderr


# --- the production broker -----------------------------------------------------------------


@pytest.fixture
def cloud(production_broker, mqtt_probe):
    """The cloud identity, subscribed to everything under the root."""
    broker, creds = production_broker
    probe = mqtt_probe(broker, creds.client("cloud")).connect()
    assert probe.subscribe(f"{topics.ROOT}/#").value == 1
    return probe


@pytest.fixture
def node_a(production_broker, mqtt_probe):
    broker, creds = production_broker
    return mqtt_probe(broker, creds.client("node-a")).connect()


@pytest.mark.broker
def test_production_url_is_tls_and_advertises_packet_limit(production_broker, node_a) -> None:
    broker, _ = production_broker
    assert broker.url == f"mqtts://127.0.0.1:{broker.port}"
    assert node_a.connack_properties.MaximumPacketSize == 5 * 1024 * 1024


@pytest.mark.broker
def test_node_publishes_every_own_up_topic_to_the_cloud(cloud, node_a) -> None:
    for spec in NODE_TOPICS:
        if spec.direction is Direction.UP:
            topic = _topic(spec.kind, "node-a")
            assert node_a.publish(topic, spec.kind.value.encode()).value == 0, topic
            assert cloud.expect(topic).payload == spec.kind.value.encode()


@pytest.mark.broker
def test_node_cannot_publish_as_another_node(cloud, node_a) -> None:
    for kind in (Kind.STATUS, Kind.HARDEX, Kind.PROGRESS, Kind.ARTIFACT_PUSH):
        code = node_a.publish(_topic(kind, "node-b"), b"forged")
        assert code.value == NOT_AUTHORIZED, kind
    # Barrier: node-a's next (allowed) message arrives first, so the forged ones never came.
    node_a.publish(_topic(Kind.SAMPLES, "node-a"), b"real")
    assert cloud.expect(_topic(Kind.SAMPLES, "node-a")).payload == b"real"


@pytest.mark.broker
def test_node_cannot_publish_its_own_down_topics(cloud, node_a) -> None:
    for spec in NODE_TOPICS:
        if spec.direction is Direction.DOWN:
            code = node_a.publish(_topic(spec.kind, "node-a"), b"self-granted")
            assert code.value == NOT_AUTHORIZED, spec.kind
    node_a.publish(_topic(Kind.SAMPLES, "node-a"), b"real")
    assert cloud.expect(_topic(Kind.SAMPLES, "node-a")).payload == b"real"


@pytest.mark.broker
def test_node_reads_only_its_own_down_topics(cloud, node_a) -> None:
    # mosquitto 2.0 grants the SUBACK and filters each delivery by the ACL instead.
    for filter_ in ("#", f"{topics.ROOT}/node/node-b/#", _topic(Kind.DESIRED, "node-b")):
        assert not node_a.subscribe(filter_).is_failure
    for kind in (Kind.DESIRED, Kind.TASK, Kind.ACK, Kind.ARTIFACT_CHUNK):
        assert cloud.publish(_topic(kind, "node-b"), b"for node-b").value == 0
    # node-a also must not see other nodes' reports, nor its own up topics.
    other = _topic(Kind.STATUS, "node-b")
    assert cloud.publish(other, b"cloud wrote it").value == 0
    assert node_a.publish(_topic(Kind.HARDEX, "node-a"), b"mine").value == 0
    # Barrier: the cloud's next message, for node-a, is the first node-a receives.
    assert cloud.publish(_topic(Kind.DESIRED, "node-a"), b"for node-a").value == 0
    got = node_a.expect(_topic(Kind.DESIRED, "node-a"))
    assert got.payload == b"for node-a"


SHA = "ab" * 32


@pytest.mark.broker
def test_node_reads_but_cannot_write_the_shared_model_topic(cloud, node_a, production_broker,
                                                           mqtt_probe) -> None:
    broker, creds = production_broker
    node_b = mqtt_probe(broker, creds.client("node-b")).connect()
    assert not node_a.subscribe(topics.models_filter()).is_failure
    code = node_b.publish(topics.model_chunks(SHA), b"forged model")
    assert code.value == NOT_AUTHORIZED
    assert cloud.publish(topics.model_chunks(SHA), b"from the cloud").value == 0
    # The cloud's message is the first node-a receives: node-b's never went through.
    assert node_a.expect(topics.model_chunks(SHA)).payload == b"from the cloud"


@pytest.mark.broker
def test_user_name_cannot_override_the_certificate_identity(
    production_broker, cloud, mqtt_probe
) -> None:
    broker, creds = production_broker
    impostor = mqtt_probe(broker, creds.client("node-a"), username="cloud", password="x").connect()
    assert impostor.publish(_topic(Kind.STATUS, "node-b"), b"forged").value == NOT_AUTHORIZED
    assert impostor.publish(_topic(Kind.DESIRED, "node-a"), b"forged").value == NOT_AUTHORIZED


@pytest.mark.broker
def test_last_will_reaches_the_cloud_only_on_own_status(
    production_broker, cloud, mqtt_probe
) -> None:
    broker, creds = production_broker
    forged = mqtt_probe(
        broker, creds.client("node-a"), will=(_topic(Kind.STATUS, "node-b"), b"lost")
    ).connect()
    forged.drop()
    honest = mqtt_probe(
        broker, creds.client("node-a"), will=(_topic(Kind.STATUS, "node-a"), b"lost")
    ).connect()
    honest.drop()
    try:
        got = cloud.expect(_topic(Kind.STATUS, "node-a"))
        assert got.payload == b"lost"
        late = mqtt_probe(broker, creds.client("cloud")).connect()
        late.subscribe(_topic(Kind.STATUS, "node-b"))
        late.subscribe(_topic(Kind.STATUS, "node-a"))
        # Retained messages come in subscription order: a forged node-b one would come first.
        assert late.expect(_topic(Kind.STATUS, "node-a")).payload == b"lost"
    finally:  # the broker is shared by this module: clear the retained status
        cloud.publish(_topic(Kind.STATUS, "node-a"), b"", retain=True)


def _refused_below_mqtt(outcome: object) -> bool:
    """True when the connection failed without any CONNACK, i.e. in the TLS handshake."""
    return not isinstance(outcome, ReasonCode)


@pytest.mark.broker
def test_client_without_certificate_is_refused(production_broker, mqtt_probe) -> None:
    broker, creds = production_broker
    anonymous = mqtt_probe(broker, None, ca=str(creds.ca))
    assert _refused_below_mqtt(anonymous.try_connect())
    assert "did not return a certificate" in broker.log_tail(lines=20)


@pytest.mark.broker
def test_certificate_from_another_ca_is_refused(production_broker, mqtt_probe, tmp_path) -> None:
    broker, creds = production_broker
    stranger = generate_credentials(tmp_path / "other", ["node-a"]).client("node-a")
    probe = mqtt_probe(broker, stranger, ca=str(creds.ca))  # trusts the right server
    assert _refused_below_mqtt(probe.try_connect())
    assert "certificate verify failed" in broker.log_tail(lines=20)


@pytest.mark.broker
def test_client_refuses_a_server_from_another_ca(production_broker, mqtt_probe, tmp_path) -> None:
    broker, creds = production_broker
    other_ca = generate_credentials(tmp_path / "other", []).ca
    probe = mqtt_probe(broker, creds.client("node-a"), ca=str(other_ca))
    outcome = probe.try_connect()
    assert isinstance(outcome, ssl.SSLCertVerificationError)


@pytest.mark.broker
def test_revoked_node_is_refused_after_restart(tmp_path: Path, mqtt_probe) -> None:
    creds = generate_credentials(tmp_path / "creds", ["node-a", "node-b"])
    node_b = creds.client("node-b")
    kept = tmp_path / "node-b-bundle"
    shutil.copytree(node_b.cert.parent, kept)  # what the stolen device still holds
    with Broker(tmp_path / "broker", credentials=creds) as broker:
        mqtt_probe(broker, ClientCredentials.load(kept)).connect()
        revoked = revoke_identity(tmp_path / "creds", "node-b")
        assert revoked.nodes == ["node-a"]
        broker.restart()
        assert _refused_below_mqtt(mqtt_probe(broker, ClientCredentials.load(kept)).try_connect())
        assert "revoked" in broker.log_tail(lines=20)
        mqtt_probe(broker, revoked.client("node-a")).connect()


# --- password mode -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def password_broker(production_credentials, tmp_path_factory):
    with Broker(
        tmp_path_factory.mktemp("pw-broker"), credentials=production_credentials, password_auth=True
    ) as broker:
        yield broker, production_credentials


@pytest.mark.broker
def test_password_mode_scopes_nodes_like_certificates(password_broker, mqtt_probe) -> None:
    broker, creds = password_broker
    a = creds.client("node-a")
    cloud = mqtt_probe(broker, None, username="cloud", password=creds.client("cloud").password)
    cloud.connect().subscribe(f"{topics.ROOT}/#")
    node = mqtt_probe(broker, None, username="node-a", password=a.password).connect()
    assert node.publish(_topic(Kind.STATUS, "node-b"), b"forged").value == NOT_AUTHORIZED
    assert node.publish(_topic(Kind.STATUS, "node-a"), b"online").value == 0
    assert cloud.expect(_topic(Kind.STATUS, "node-a")).payload == b"online"


@pytest.mark.broker
@pytest.mark.parametrize(
    ("username", "password"), [(None, None), ("node-a", "wrong"), ("node-z", "anything")]
)
def test_password_mode_refuses_bad_logins(password_broker, mqtt_probe, username, password) -> None:
    broker, _ = password_broker
    outcome = mqtt_probe(broker, None, username=username, password=password).try_connect()
    assert isinstance(outcome, ReasonCode) and outcome.value == NOT_AUTHORIZED


@pytest.mark.broker
def test_cloud_managers_split_a_topic_with_a_shared_subscription(production_broker, mqtt_probe,
                                                                  node_a) -> None:
    """What several cloud managers rely on (docs/scaling.md): MQTT 5 shared subscriptions
    (``$share/GROUP/FILTER``) are granted to the cloud identity by the generated ACL, and each
    message goes to one member of the group."""
    broker, creds = production_broker
    shared = f"$share/edgeloop/{topics.node_filter(Kind.SAMPLES)}"
    members = [mqtt_probe(broker, creds.client("cloud")).connect() for _ in range(2)]
    assert [m.subscribe(shared).value for m in members] == [1, 1]
    sent = [f"report-{i}".encode() for i in range(20)]
    for payload in sent:
        node_a.publish(_topic(Kind.SAMPLES, "node-a"), payload)
    got: dict[int, list[bytes]] = {0: [], 1: []}
    deadline = time.monotonic() + 10
    while sum(map(len, got.values())) < len(sent) and time.monotonic() < deadline:
        for i, member in enumerate(members):  # each message reaches one member or the other
            with contextlib.suppress(queue.Empty):
                got[i].append(member.messages.get(timeout=0.1).payload)
    assert sorted(got[0] + got[1]) == sorted(sent)  # each exactly once across the group


#: share-group names a node could try: the project's and the broker's usual words, and the
#: form of the managers' own name with a wrong secret
GUESSED_GROUPS = ("edgeloop", "edgeloop-cloud", "cloud", "managers", "ingest", "group", "default",
                  "share", "edgeloop-" + "0" * 32)


@pytest.mark.broker
def test_a_node_that_joins_guessed_share_groups_takes_no_report_from_the_managers(
        production_broker, mqtt_probe, node_a, tmp_path) -> None:
    """Mosquitto 2.0 checks a subscription against the ACL only when it delivers: a node in the
    managers' share group would be dealt reports that the ACL then drops. The group name is a
    secret kept in the managers' store: a node with a valid identity that subscribes every
    guess with every filter it could guess forms groups of its own, and the managers (two
    members of their group) still get every report, each once."""
    from cloud_manager.ingest_split import IngestSplit
    from cloud_manager.store import Store

    broker, creds = production_broker
    store = Store(tmp_path / "state")
    with store.transaction():
        group = store.share_group()
    with store.transaction():
        assert store.share_group() == group  # made once, then kept
    store.close()
    assert group not in GUESSED_GROUPS and len(group) > 32
    split = IngestSplit(group, member=True, me="a", leader=lambda: None)
    samples = split.filter(topics.node_filter(Kind.SAMPLES))
    members = [mqtt_probe(broker, creds.client("cloud")).connect() for _ in range(2)]
    assert [m.subscribe(samples).value for m in members] == [1, 1]
    thief = mqtt_probe(broker, creds.client("node-a")).connect()
    for guess in GUESSED_GROUPS:
        for guessed_filter in (topics.node_filter(Kind.SAMPLES),
                               topics.node_filter(Kind.SAMPLES, "node-a"),
                               f"{topics.ROOT}/#", "#"):
            thief.subscribe(f"$share/{guess}/{guessed_filter}")
    sent = [f"report-{i}".encode() for i in range(20)]
    for payload in sent:
        node_a.publish(_topic(Kind.SAMPLES, "node-a"), payload)
    got: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(got) < len(sent) and time.monotonic() < deadline:
        for member in members:
            with contextlib.suppress(queue.Empty):
                got.append(member.messages.get(timeout=0.1).payload)
    assert sorted(got) == sorted(sent)  # none lost to the node's groups, none twice
