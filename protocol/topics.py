"""The MQTT topic tree: every topic edgeloop uses is built and parsed here, and nowhere else.

Node-scoped topics have exactly one ``{node}`` level, always the fourth, so that a single ACL
pattern line with ``%u`` scopes a node to its own topics (see ``mosquitto/creds.py``, which
generates the ACL from :data:`NODE_TOPICS`).

Direction is part of each topic's definition: ``UP`` is edge -> cloud (a node publishes it),
``DOWN`` is cloud -> edge (a node subscribes to it).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import Enum

from protocol.errors import ProtocolError

ROOT = "edgeloop/v1"

# Node names and task ids become topic levels and file names: keep them to a safe alphabet.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
_NAME_RE = re.compile(rf"^{NAME_PATTERN}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class Direction(str, Enum):
    UP = "up"  # edge -> cloud
    DOWN = "down"  # cloud -> edge


class Kind(str, Enum):
    """What a topic carries; the codec maps each kind to one message model."""

    STATUS = "status"
    DESIRED = "desired"
    TASK = "task"
    PROGRESS = "progress"
    SAMPLES = "samples"
    HARDEX = "hardex"
    ACK = "ack"
    ARTIFACT_REQUEST = "artifact_request"
    ARTIFACT_CHUNK = "artifact_chunk"
    ARTIFACT_PULL = "artifact_pull"
    ARTIFACT_PUSH = "artifact_push"
    ERROR = "error"
    API_REQUEST = "api_request"
    API_RESPONSE = "api_response"
    JOB_STATUS = "job_status"
    LABELS = "labels"
    LABEL_ACK = "label_ack"
    ARTIFACT_WANT = "artifact_want"
    MODEL_CHUNK = "model_chunk"


@dataclass(frozen=True)
class NodeTopic:
    """One node-scoped topic: its path below ``{ROOT}/node/{node}/`` and its direction.

    ``{task}`` in a path is a single level holding a task id.
    """

    kind: Kind
    path: str
    direction: Direction
    retained: bool = False


NODE_TOPICS: tuple[NodeTopic, ...] = (
    NodeTopic(Kind.STATUS, "status", Direction.UP, retained=True),
    NodeTopic(Kind.DESIRED, "desired", Direction.DOWN, retained=True),
    NodeTopic(Kind.TASK, "task/{task}", Direction.DOWN),
    NodeTopic(Kind.PROGRESS, "task/{task}/progress", Direction.UP),
    NodeTopic(Kind.SAMPLES, "samples", Direction.UP),
    NodeTopic(Kind.HARDEX, "hardex", Direction.UP),
    # The cloud acknowledges a node's reliable messages (hard examples, results) here.
    NodeTopic(Kind.ACK, "ack", Direction.DOWN),
    # Downloads (model to node): the node requests chunk i, the cloud answers with it.
    NodeTopic(Kind.ARTIFACT_REQUEST, "artifact/request", Direction.UP),
    NodeTopic(Kind.ARTIFACT_CHUNK, "artifact/chunk", Direction.DOWN),
    # The node is about to download an artifact: the cloud may fan it out on models/<sha256>.
    NodeTopic(Kind.ARTIFACT_WANT, "artifact/want", Direction.UP),
    # Uploads (trained model to cloud): the cloud pulls chunk i, the node pushes it.
    NodeTopic(Kind.ARTIFACT_PULL, "artifact/pull", Direction.DOWN),
    NodeTopic(Kind.ARTIFACT_PUSH, "artifact/push", Direction.UP),
    NodeTopic(Kind.ERROR, "error", Direction.UP),
    # Labelled samples for a dataset the node holds; the node confirms each on labels/ack.
    NodeTopic(Kind.LABELS, "labels", Direction.DOWN),
    NodeTopic(Kind.LABEL_ACK, "labels/ack", Direction.UP),
)

_BY_KIND = {t.kind: t for t in NODE_TOPICS}

API_VERBS = (
    "apply",
    "get",
    "describe",
    "delete",
    "create_namespace",
    "pause",
    "resume",
    "rollback",
    "rollout",
    "hardex_list",
    "hardex_export",
    "label_import",
)


def check_name(value: str, what: str = "name") -> str:
    """Return ``value`` if it can be a topic level, else raise :class:`ProtocolError`."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ProtocolError(
            f"{what}: {value!r} is not a valid name "
            f"(1-63 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit)"
        )
    return value


def node_topic(kind: Kind, node: str, task: str | None = None) -> str:
    """Build the topic of ``kind`` for ``node`` (and ``task`` for task topics)."""
    spec = _BY_KIND.get(kind)
    if spec is None:
        raise ProtocolError(f"kind: {kind!r} is not a node-scoped topic kind")
    check_name(node, "node")
    path = spec.path
    if "{task}" in path:
        if task is None:
            raise ProtocolError(f"task: required for a {kind.value} topic")
        path = path.replace("{task}", check_name(task, "task"))
    return f"{ROOT}/node/{node}/{path}"


def node_filter(kind: Kind, node: str = "+") -> str:
    """A subscription filter for ``kind`` on one node, or on every node with ``node='+'``."""
    spec = _BY_KIND[kind]
    if node != "+":
        check_name(node, "node")
    return f"{ROOT}/node/{node}/{spec.path.replace('{task}', '+')}"


def status(node: str) -> str:
    return node_topic(Kind.STATUS, node)


def desired(node: str) -> str:
    return node_topic(Kind.DESIRED, node)


def task(node: str, task_id: str) -> str:
    return node_topic(Kind.TASK, node, task_id)


def progress(node: str, task_id: str) -> str:
    return node_topic(Kind.PROGRESS, node, task_id)


def samples(node: str) -> str:
    return node_topic(Kind.SAMPLES, node)


def hardex(node: str) -> str:
    return node_topic(Kind.HARDEX, node)


def ack(node: str) -> str:
    return node_topic(Kind.ACK, node)


def labels(node: str) -> str:
    return node_topic(Kind.LABELS, node)


def label_ack(node: str) -> str:
    return node_topic(Kind.LABEL_ACK, node)


def models_filter() -> str:
    """Every model file the cloud fans out: nodes read it (one subscription each), only the
    cloud writes it (see ``mosquitto/acl.py``)."""
    return f"{ROOT}/models/+"


def model_chunks(sha256: str) -> str:
    """The shared topic on which the cloud publishes the chunks of the model file ``sha256``
    once for every node that downloads it (the broker fans them out), instead of once per node
    on each ``artifact/chunk``. Not retained: QoS 1 to persistent sessions."""
    return f"{ROOT}/models/{check_sha256(sha256)}"


def check_sha256(value: str) -> str:
    """Return ``value`` if it is a lowercase hex sha256, else raise :class:`ProtocolError`."""
    if not isinstance(value, str) or not _SHA256_RE.match(value):
        raise ProtocolError(f"sha256: {value!r} is not 64 lowercase hex digits")
    return value


def api_request(verb: str) -> str:
    if verb not in API_VERBS:
        raise ProtocolError(f"verb: {verb!r} is not one of {', '.join(API_VERBS)}")
    return f"{ROOT}/api/{verb}"


def api_request_filter() -> str:
    return f"{ROOT}/api/+"


def api_response(client: str) -> str:
    """Where a client reads its API responses (given as the v5 response-topic)."""
    return f"{ROOT}/reply/{check_name(client, 'client')}"


def job_status(namespace: str, name: str) -> str:
    """Retained job status, for dashboards."""
    return f"{ROOT}/job/{check_name(namespace, 'namespace')}/{check_name(name, 'job')}/status"


def job_status_filter() -> str:
    return f"{ROOT}/job/+/+/status"


def node_tree_filter() -> str:
    """Every node-scoped topic of every node."""
    return f"{ROOT}/node/+/#"


def sweep_marker(client: str) -> str:
    """Where a client that looks for retained messages publishes to itself: the marker arrives
    after every retained message its subscription was handed."""
    return f"{ROOT}/sweep/{check_name(client, 'client')}"


def retain_allowed(topic: str) -> bool:
    """Whether a retained message may stay on ``topic``: the node topics the design retains
    (``status`` and ``desired``, see :data:`NODE_TOPICS`) and the job status. Anything else
    retained is junk a client left on the broker."""
    try:
        route = parse(topic)
    except ProtocolError:
        return False
    if route.kind is Kind.JOB_STATUS:
        return True
    spec = _BY_KIND.get(route.kind)
    return spec is not None and route.node is not None and spec.retained


@dataclass(frozen=True)
class Route:
    """What a concrete topic is: its kind and the names its levels hold."""

    kind: Kind
    node: str | None = None
    task: str | None = None
    verb: str | None = None
    client: str | None = None
    namespace: str | None = None
    name: str | None = None
    sha256: str | None = None


def _compile_node_patterns() -> list[tuple[re.Pattern[str], NodeTopic]]:
    patterns = []
    for spec in NODE_TOPICS:
        path = re.escape(spec.path).replace(r"\{task\}", f"(?P<task>{NAME_PATTERN})")
        rx = re.compile(rf"^{re.escape(ROOT)}/node/(?P<node>{NAME_PATTERN})/{path}$")
        patterns.append((rx, spec))
    return patterns


_NODE_PATTERNS = _compile_node_patterns()
_API_RE = re.compile(rf"^{re.escape(ROOT)}/api/(?P<verb>[a-z_]+)$")
_REPLY_RE = re.compile(rf"^{re.escape(ROOT)}/reply/(?P<client>{NAME_PATTERN})$")
_MODEL_RE = re.compile(rf"^{re.escape(ROOT)}/models/(?P<sha256>[0-9a-f]{{64}})$")
_JOB_RE = re.compile(
    rf"^{re.escape(ROOT)}/job/(?P<namespace>{NAME_PATTERN})/(?P<name>{NAME_PATTERN})/status$"
)


#: distinct topics whose parse is remembered: every node's topics of a large fleet (a node has a
#: handful it sends on); past it the least recently seen are parsed again
PARSED_TOPICS_KEPT = 1 << 16


def parse(topic: str) -> Route:
    """Tell what ``topic`` is, or raise :class:`ProtocolError` naming what is wrong.

    Remembered per topic string (a :class:`Route` is immutable): every incoming message is
    parsed by the decoder and again by the admission check, and trying the patterns one by one
    costs more than the rest of either. A topic that fails is not remembered."""
    if not isinstance(topic, str):
        raise ProtocolError(f"topic: expected a string, got {type(topic).__name__}")
    return _parse(topic)


@functools.lru_cache(maxsize=PARSED_TOPICS_KEPT)
def _parse(topic: str) -> Route:
    for rx, spec in _NODE_PATTERNS:
        m = rx.match(topic)
        if m:
            return Route(spec.kind, node=m["node"], task=m.groupdict().get("task"))
    if m := _API_RE.match(topic):
        if m["verb"] not in API_VERBS:
            raise ProtocolError(f"topic: unknown API verb {m['verb']!r} in {topic!r}")
        return Route(Kind.API_REQUEST, verb=m["verb"])
    if m := _REPLY_RE.match(topic):
        return Route(Kind.API_RESPONSE, client=m["client"])
    if m := _JOB_RE.match(topic):
        return Route(Kind.JOB_STATUS, namespace=m["namespace"], name=m["name"])
    if m := _MODEL_RE.match(topic):
        return Route(Kind.MODEL_CHUNK, sha256=m["sha256"])
    raise ProtocolError(f"topic: {topic!r} is not an edgeloop topic")
