"""Fuzzing ``decode``: random and mutated payloads for every message kind; only ProtocolError
may come out. 2,000 payloads per kind (set FUZZ_EXAMPLES to change it), drawn in batches so
that hypothesis' per-example overhead does not dominate the run.

Measured with coverage.py (branch coverage of protocol/): 10,000 payloads per kind reach the same
lines and branches as 2,000 except two error lines that only chance reached (a task id or an API
verb that differs from its topic), which tests/test_codec.py now asserts directly; 2,000 take a
fifth of the time. A long run: FUZZ_EXAMPLES=10000."""

from __future__ import annotations

import os

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from message_samples import samples

from protocol.codec import encode, decode
from protocol.errors import ProtocolError
from protocol.messages import MESSAGE_FOR_KIND, Message
from protocol.topics import Kind

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2000"))
BATCH = 50
SAMPLES = samples()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=12,
)


def field_maps(model: type[Message]) -> st.SearchStrategy[dict]:
    """Maps using the model's own field names, with random values: they get past msgpack and
    exercise validation, not just the unpacker."""
    names = list(model.model_fields)
    return st.dictionaries(st.sampled_from(names), values, max_size=len(names))


@st.composite
def mutated(draw, valid: bytes) -> bytes:
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i]
    return bytes(data)


def valid_overrides(valid: Message) -> st.SearchStrategy[bytes]:
    """The valid message with one field replaced by a random value."""
    base = valid.model_dump(mode="python")
    return st.builds(
        lambda key, value: msgpack.packb({**base, key: value}, use_bin_type=True),
        st.sampled_from(sorted(base)),
        values,
    )


def payloads(kind: Kind) -> st.SearchStrategy[bytes]:
    _, message = SAMPLES[kind]
    valid = encode(message)
    return st.one_of(
        st.binary(max_size=300),
        mutated(valid),
        valid_overrides(message),
        field_maps(MESSAGE_FOR_KIND[kind]).map(lambda m: msgpack.packb(m, use_bin_type=True)),
    )


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.value)
def test_only_protocol_error_escapes(kind):
    topic, _ = SAMPLES[kind]
    outcomes = {"ok": 0, "error": 0}

    @settings(
        max_examples=-(-EXAMPLES // BATCH),
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(payloads(kind), min_size=BATCH, max_size=BATCH))
    def check(batch: list[bytes]) -> None:
        for payload in batch:
            try:
                message = decode(topic, payload)
            except ProtocolError as exc:
                assert exc.reason
                outcomes["error"] += 1
            else:
                assert isinstance(message, MESSAGE_FOR_KIND[kind])
                outcomes["ok"] += 1

    check()
    assert outcomes["ok"] + outcomes["error"] >= EXAMPLES
    assert outcomes["error"] > 0
