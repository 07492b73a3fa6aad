"""The broker's access-control list, generated from the topic tree in :mod:`protocol.topics`.

The ACL is derived from :data:`protocol.topics.NODE_TOPICS` rather than written by hand so that
adding or re-directing a topic in the protocol cannot leave the broker's rules behind: a node may
*write* exactly its own ``UP`` topics and *read* exactly its own ``DOWN`` topics, one ``pattern``
line each, with mosquitto's ``%u`` standing for the connected identity (the certificate CN, or
the user name in password mode). Every node may also *read* the shared model topic
(``models/<sha256>``, :func:`protocol.topics.models_filter`) on which the cloud publishes a model
file once for the whole fleet; only the cloud may write it. The cloud identity may do everything.
"""

from __future__ import annotations

from protocol.topics import NODE_TOPICS, ROOT, Direction, check_name, models_filter

#: How each direction maps to the access a node needs on its own topic.
_ACCESS = {Direction.UP: "write", Direction.DOWN: "read"}


def node_rules() -> list[tuple[str, str]]:
    """``(access, topic pattern)`` for every node-scoped topic, ``%u`` in the node level."""
    rules = []
    for spec in NODE_TOPICS:
        path = spec.path.replace("{task}", "+")
        rules.append((_ACCESS[spec.direction], f"{ROOT}/node/%u/{path}"))
    return rules


def shared_rules() -> list[tuple[str, str]]:
    """``(access, topic pattern)`` every node has on topics shared by the fleet: read only."""
    return [("read", models_filter())]


def build_acl(cloud: str = "cloud") -> str:
    """The text of a mosquitto ``acl_file`` for nodes scoped by ``%u`` plus the ``cloud`` user.

    ``pattern`` lines apply to every authenticated identity, so the cloud also matches them for
    its own name; that grants nothing beyond its ``topic readwrite #``.
    """
    check_name(cloud, "cloud identity")
    lines = [
        "# edgeloop broker ACL, generated from protocol/topics.py (NODE_TOPICS).",
        "# Regenerate it with `edgeloop creds`; hand edits are overwritten.",
        "#",
        "# Every node identity (certificate CN or password user name) is %u: it may publish only",
        "# its own edge->cloud topics and receive only its own cloud->edge topics.",
    ]
    lines += [f"pattern {access} {topic}" for access, topic in node_rules()]
    lines += [
        "",
        "# Model files the cloud fans out to the fleet: every node may read them, none write.",
    ]
    lines += [f"pattern {access} {topic}" for access, topic in shared_rules()]
    lines += [
        "",
        "# The cloud manager (and the operator CLI on the cloud host) may do everything.",
        f"user {cloud}",
        "topic readwrite #",
        "",
    ]
    return "\n".join(lines)
