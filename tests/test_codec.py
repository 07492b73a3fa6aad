"""The codec: round trips, size limits, and decode errors that name the field."""

from __future__ import annotations

import msgpack
import pytest
from message_samples import IMAGE, SHA, samples

from protocol import topics
from protocol.codec import DEFAULT_MAX_PAYLOAD, PayloadTooLarge, decode, encode
from protocol.errors import ProtocolError
from protocol.messages import ApiRequest, ApiResponse, HardExample, HardExampleSidecar
from protocol.topics import Kind

SAMPLES = samples()


def test_every_kind_has_a_sample():
    assert set(SAMPLES) == set(Kind)


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.value)
def test_round_trip(kind):
    topic, message = SAMPLES[kind]
    decoded = decode(topic, encode(message))
    assert decoded == message
    assert decoded.key == message.key
    assert decoded.v == 1


def test_binary_fields_are_msgpack_bin_not_base64():
    _, message = SAMPLES[Kind.HARDEX]
    raw = msgpack.unpackb(encode(message), raw=False)
    assert isinstance(raw["image"], bytes)
    assert raw["image"] == IMAGE


def test_api_answer_data_is_written_as_it_was_validated():
    data = {"items": [{"name": "edge0", "labels": {"site": "north"}, "serving": {},
                       "fps": 12.5, "up": True, "error": None, "versions": [1, 2]}],
            "kind": "Node"}
    response = ApiResponse(request_id="r1", ok=True, data=data)
    assert msgpack.unpackb(encode(response), raw=False)["data"] == data
    assert response.model_dump(mode="json")["data"] == data
    assert decode(topics.api_response("cli"), encode(response)) == response


def test_encode_refuses_oversize_payload():
    big = b"\x00" * (DEFAULT_MAX_PAYLOAD + 1)
    import hashlib

    message = HardExample(
        node="edge0",
        job="ns/job",
        sha256=hashlib.sha256(big).hexdigest(),
        image=big,
        sidecar=HardExampleSidecar(),
    )
    with pytest.raises(PayloadTooLarge, match=r"hardex: payload of \d+ bytes .* over the 4194304 byte"):
        encode(message)


def test_decode_refuses_oversize_payload():
    topic, message = SAMPLES[Kind.ACK]
    with pytest.raises(ProtocolError, match="over the 10 byte limit"):
        decode(topic, encode(message), max_size=10)


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("edgeloop/v1/node/edge0/nope", b"\x80", "is not an edgeloop topic"),
        ("edgeloop/v1/node/bad name/status", b"\x80", "is not an edgeloop topic"),
        ("edgeloop/v1/api/format_disk", b"\x80", "unknown API verb 'format_disk'"),
        (topics.status("edge0"), b"", "payload: empty"),
        (topics.status("edge0"), b"\xc1", "payload: not valid msgpack"),
        (topics.status("edge0"), msgpack.packb([1, 2]), "expected a msgpack map, got list"),
        (topics.status("edge0"), msgpack.packb({"v": 2}), "v: schema version 2 is not supported"),
        (topics.status("edge0"), msgpack.packb({"node": "edge0"}), "status: state: Field required"),
        (
            topics.status("edge0"),
            msgpack.packb({"node": "edge0", "state": "dancing", "boot_id": "b"}),
            "status: state: Input should be 'online', 'offline' or 'lost'",
        ),
        (
            topics.status("edge0"),
            msgpack.packb({"node": "edge1", "state": "online", "boot_id": "b"}),
            "node: 'edge1' in the payload but 'edge0' in the topic",
        ),
        (
            topics.hardex("edge0"),
            msgpack.packb(
                {"node": "edge0", "job": "a/b", "sha256": "0" * 64, "image": b"x", "sidecar": {}}
            ),
            "sha256: " + "0" * 64 + " does not match the image",
        ),
        (
            topics.hardex("edge0"),
            msgpack.packb(
                {
                    "node": "edge0",
                    "job": "a/b",
                    "sha256": SHA,
                    "image": IMAGE,
                    "sidecar": {"boxes": [[1, 2, 3]], "scores": [0.1], "classes": [0]},
                },
                use_bin_type=True,
            ),
            "hardex: sidecar.boxes.0: List should have at least 4 items",
        ),
        (
            topics.progress("edge0", "t1"),
            msgpack.packb({"node": "edge0", "task_id": "t2", "state": "Running"}),
            "task_id: 't2' in the payload but 't1' in the topic",
        ),
        (
            topics.api_request("get"),
            msgpack.packb({"request_id": "r1", "verb": "delete"}),
            "verb: 'delete' in the payload but 'get' in the topic",
        ),
    ],
)
def test_decode_errors_name_the_field(topic, payload, reason):
    with pytest.raises(ProtocolError) as info:
        decode(topic, payload)
    assert reason in str(info.value)


def test_manifest_text_on_the_apply_topic_is_an_apply_request():
    text = b"apiVersion: sedna.io/v1alpha1\nkind: Dataset\n"
    message = decode(topics.api_request("apply"), text)
    assert isinstance(message, ApiRequest)
    assert message.verb == "apply"
    assert message.body == text.decode()
    # the same text twice is the same request: resends are deduped
    assert decode(topics.api_request("apply"), text).key == message.key


def test_verb_is_taken_from_the_topic():
    request = ApiRequest(request_id="r", resource="jobs")
    assert decode(topics.api_request("get"), encode(request)).verb == "get"


def test_every_node_topic_has_exactly_one_node_level():
    for spec in topics.NODE_TOPICS:
        topic = topics.node_topic(spec.kind, "edge0", "t1")
        assert topic.split("/").count("edge0") == 1
        assert topic.split("/")[3] == "edge0"
        assert topics.parse(topic).node == "edge0"


def test_a_topic_is_parsed_once_and_remembered():
    topic = topics.samples("node-cache")
    first = topics.parse(topic)
    assert first.kind is Kind.SAMPLES and first.node == "node-cache"
    assert topics.parse(topic) is first  # remembered: the decoder and the budgets ask again
    assert topics._parse.cache_info().maxsize == topics.PARSED_TOPICS_KEPT


def test_a_bad_topic_is_refused_every_time_not_remembered():
    topic = "edgeloop/v1/node/node-1/no-such-kind"
    for _ in range(2):
        with pytest.raises(ProtocolError, match="is not an edgeloop topic"):
            topics.parse(topic)
    with pytest.raises(ProtocolError, match="expected a string"):
        topics.parse(b"edgeloop/v1/api/get")  # type: ignore[arg-type]
