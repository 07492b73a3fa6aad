"""Which hard examples the inbox keeps: the disk a node can fill is bounded.

Every node may publish on its own ``hardex`` topic, so without a gate any node could fill the
cloud's disk with any bytes for any job name. :func:`admit` is the pure decision: an example is
kept only for a job that exists, from one of the nodes the job deploys to (they run its
inference and mine its hard examples), when its bytes are the image they claim to be (see
:mod:`protocol.image_format`), while the job's and the node's quotas have room, and while its
source (a node's camera) holds no more than its share of the job's examples waiting for labels
(:func:`share_refusal`: one busy camera cannot fill a round). A refusal
says why and whether it is temporary (a full quota: the node holds the example and tries again
later) or not (the node sets it aside); the node learns it from its acknowledgement topic.

:class:`HardexAdmission` is the thin shell around it: it keeps the usage per job and per node
(read from the inbox at start, updated as examples are stored) and counts refusals by cause.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from cloud_manager.hardex_inbox import HardExampleInbox, Stored, source_of
from protocol.image_format import image_problem
from protocol.messages import HardExample, Refusal

log = logging.getLogger("edgeloop.cloud.hardex")

MB = 1024 * 1024
#: A source holding fewer examples waiting for labels than this is never held back by the
#: share cap: a share means something once there is a round's worth to share.
SHARE_FLOOR = 20


@dataclass(frozen=True)
class HardexQuotas:
    """Most image bytes and examples the inbox keeps per job and per sending node."""

    job_bytes: int = 4096 * MB
    job_count: int = 20_000
    node_bytes: int = 8192 * MB
    node_count: int = 40_000


@dataclass(frozen=True)
class Usage:
    bytes: int = 0
    count: int = 0

    def plus(self, size: int) -> Usage:
        return Usage(self.bytes + size, self.count + 1)


@dataclass(frozen=True)
class Refused:
    """A refusal and its cause, a short word for counting (``no_job``, ``bad_image``, ...)."""

    cause: str
    refusal: Refusal


def admit(example: HardExample, target_nodes: Collection[str] | None, job_usage: Usage,
          node_usage: Usage, quotas: HardexQuotas) -> Refused | None:
    """None when the inbox may keep ``example``; else why not.

    ``target_nodes`` are the nodes the example's job deploys to, None when no such job exists.
    """
    if target_nodes is None:
        return _refuse("no_job", f"job {example.job} does not exist", temporary=False)
    if example.node not in target_nodes:
        names = sorted(target_nodes)
        where = (f"node{'s' if len(names) > 1 else ''} {', '.join(names)}" if names
                 else "no node now")
        return _refuse("not_deploy_node", f"job {example.job} deploys to {where}, "
                       f"not {example.node}: only its deploy nodes send its hard examples",
                       temporary=False)
    problem = image_problem(example.image, example.image_format)
    if problem is not None:
        return _refuse("bad_image", problem, temporary=False)
    size = len(example.image)
    for cause, who, used, max_bytes, max_count in (
        ("job_quota", f"job {example.job}", job_usage, quotas.job_bytes, quotas.job_count),
        ("node_quota", f"node {example.node}", node_usage, quotas.node_bytes, quotas.node_count),
    ):
        if used.count + 1 > max_count or used.bytes + size > max_bytes:
            return _refuse(cause, f"the inbox of {who} is full ({used.count} examples, "
                           f"{used.bytes / MB:.1f} MB of at most {max_count} and "
                           f"{max_bytes / MB:.0f} MB)", temporary=True)
    return None


def share_refusal(source: str, waiting: Mapping[str, int], max_share: float,
                  floor: int = SHARE_FLOOR) -> Refused | None:
    """None when ``source`` may add an example: it holds no more than ``max_share`` of the
    job's examples waiting for labels (``waiting``: per source); else a temporary refusal (the
    node holds the example and sends it again later, when labels or other cameras made room).

    A source holding fewer than ``floor``, and the only source that sent any, are never held
    back: a camera that sends nothing does not stop the others. The cap is never below an even
    split between the sources (``1/k``), so that some source can always add one."""
    held = waiting.get(source, 0)
    total = sum(waiting.values())
    sources = len(set(waiting) | {source})
    if max_share >= 1.0 or held < floor or sources == 1:
        return None
    if held <= max(max_share, 1.0 / sources) * total:
        return None
    return _refuse("source_share", f"{source} already holds {held} of the job's {total} hard "
                   f"examples waiting for labels; one source may hold at most {max_share:.0%} "
                   "(deploySpec.maxSourceShare)", temporary=True)


def _refuse(cause: str, reason: str, *, temporary: bool) -> Refused:
    return Refused(cause, Refusal(reason=reason, temporary=temporary))


class HardexAdmission:
    """The usage the quotas count, and the refusals by cause since start."""

    def __init__(self, inbox: HardExampleInbox, quotas: HardexQuotas,
                 target_nodes_of: Callable[[str], Collection[str] | None],
                 max_share_of: Callable[[str], float] | None = None) -> None:
        """``max_share_of``: a job's ``deploySpec.maxSourceShare`` (None: no share cap)."""
        self.inbox = inbox
        self.quotas = quotas
        self.target_nodes_of = target_nodes_of
        self.max_share_of = max_share_of
        self.refused: Counter[str] = Counter()
        self._jobs: dict[str, Usage] = {}
        self._nodes: dict[str, Usage] = {}
        for job, node, size in inbox.usage():
            self._add(job, node, size)

    def check(self, example: HardExample) -> Refusal | None:
        """None: store it (a redelivery of a stored example always is); else the refusal,
        counted and logged."""
        if self.inbox.has(example.job, example.sha256):
            return None
        refused = admit(example, self.target_nodes_of(example.job), self.job_usage(example.job),
                        self.node_usage(example.node), self.quotas)
        if refused is None and self.max_share_of is not None:
            refused = share_refusal(source_of(example.node, example.sidecar.model_dump()),
                                    self.inbox.waiting_by_source(example.job),
                                    self.max_share_of(example.job))
        if refused is None:
            return None
        self.refused[refused.cause] += 1
        log.warning("hard example %s from %s for %s refused (%s): %s", example.sha256[:12],
                    example.node, example.job, refused.cause, refused.refusal.reason)
        return refused.refusal

    def stored(self, example: HardExample, stored: Stored) -> None:
        if stored.new:
            self._add(example.job, example.node, len(example.image))

    def job_usage(self, job: str) -> Usage:
        return self._jobs.get(job, Usage())

    def node_usage(self, node: str) -> Usage:
        return self._nodes.get(node, Usage())

    def _add(self, job: str, node: str, size: int) -> None:
        self._jobs[job] = self.job_usage(job).plus(size)
        self._nodes[node] = self.node_usage(node).plus(size)
