"""Staged rollout of one model version over a job's target nodes. Pure.

``start`` and ``handle`` return the rollout's next state and the actions the job's machine
(:mod:`cloud_manager.state_machine`) carries out: send a version to a node, note a condition,
end the rollout. Nothing here does I/O or reads the clock (the time and the online nodes come in
:class:`Context`), so every path is a scenario test.

The stages, with the thresholds of the manifest's ``deploySpec.rollout`` (:class:`Policy`):

1. **Canary**: ``canary`` nodes (online ones first) get the version; the others keep the
   previous one. Each canary runs the previous version beside the new one on a sample of frames
   (the shadow comparison) and reports its health in its status. Once every canary serves the
   version, the rollout bakes for ``bake_s``; then each canary must have kept its FPS within
   ``max_fps_drop`` of the previous version's and agree with the previous version at least
   ``min_agreement`` (a canary without a comparison, e.g. one that had no previous model
   loaded, passes on the rest, and a note says so). Only reports of the version count: the
   judgement waits for a canary's first stats of it and, when its comparison runs, for a
   compared frame, at most ``health_timeout_s``.
2. **Waves**: the other online nodes get the version ``wave`` at a time; the next wave goes when
   every node of this one serves it (or went offline, or stayed silent for ``health_timeout_s``:
   a note names it, and it gets the version whenever it answers).
3. **Completed** once every node was sent the version. Offline nodes are sent it last without
   waiting: the retained desired state gives it to them when they return.

At any stage, a node that was sent the version and reports a crash of its worker (restarts
since it got the version), a worker that is down, or a model that would not load fails the
rollout: every node that was sent the version goes back to the previous one, the rollout ends
``Failed`` with the reason, and the nodes not reached yet never see the version. A canary that
stays online and silent about the version for ``health_timeout_s`` fails it too (no evidence is
no pass); an offline canary is replaced by another node. ``Abort`` rolls back the same way;
``Pause`` holds the next step (a crash still rolls back).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from protocol.manifests import Rollout, share_of

Phase = Literal["Canary", "Waves", "Completed", "Failed", "Aborted"]
Role = Literal["canary", "wave"]
#: waiting: not sent yet; sent: sent, not serving it yet; serving: serves the version;
#: unconfirmed: sent, offline or silent: it gets the version whenever it answers, unwaited
NodePhase = Literal["waiting", "sent", "serving", "unconfirmed"]
ACTIVE: tuple[Phase, ...] = ("Canary", "Waves")


@dataclass(frozen=True)
class Policy:
    """The manifest's ``deploySpec.rollout``, in the units the machine uses."""

    canary: int | str = 1
    bake_s: float = 300.0
    wave: int | str = "25%"
    min_agreement: float = 0.6
    max_fps_drop: float = 0.2
    health_timeout_s: float = 600.0
    shadow_every: int = 10

    @classmethod
    def of(cls, spec: Rollout) -> Policy:
        return cls(canary=spec.canary, bake_s=spec.bake_seconds, wave=spec.wave_size,
                   min_agreement=spec.min_agreement, max_fps_drop=spec.max_fps_drop,
                   health_timeout_s=spec.health_timeout_seconds, shadow_every=spec.shadow_every)


@dataclass(frozen=True)
class Health:
    """What a node last said about the job's inference worker (its status ``health``)."""

    version: int | None
    up: bool = True
    #: restarts of the worker since the task started
    restarts: int = 0
    #: frames per second of the version serving now
    fps: float | None = None
    #: mean agreement of the serving version with the previous one (shadow comparison)
    agreement: float | None = None
    #: frames the shadow comparison covered
    compared: int = 0
    #: whether a shadow comparison runs (asked for, and a previous model beside the new one)
    shadow: bool = False
    #: hard examples per frame
    hard_rate: float | None = None
    #: the last model the worker refused to load ("" when none)
    error: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Health:
        return cls(**data)


@dataclass
class RolloutNode:
    role: Role = "wave"
    phase: NodePhase = "waiting"
    sent_at: float | None = None
    #: the node's FPS and restarts under the previous version: the baseline of its health
    fps_before: float | None = None
    restarts_before: int = 0
    #: its last health report about the version rolling out
    health: Health | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutNode:
        data = dict(data)
        data["role"] = _checked(data.get("role", "wave"), Role)
        data["phase"] = _checked(data.get("phase", "waiting"), NodePhase)
        if data.get("health") is not None:
            data["health"] = Health.from_dict(data["health"])
        return cls(**data)


def _checked(value: Any, kind: Any) -> Any:
    """A literal read from the store, checked: a name this build does not know is an error."""
    if value not in get_args(kind):
        raise ValueError(f"{value!r} is not one of {', '.join(get_args(kind))}")
    return value


@dataclass
class RolloutState:
    version: int | None
    previous: int | None
    started: float
    phase: Phase = "Canary"
    paused: bool = False
    nodes: dict[str, RolloutNode] = field(default_factory=dict)
    #: when the canaries' bake ends (None: not every canary serves the version yet)
    bake_until: float | None = None
    waves: int = 0
    #: why it ended, or what it waits for
    reason: str = ""
    ended: float | None = None

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    def canaries(self) -> list[str]:
        return sorted(n for n, r in self.nodes.items() if r.role == "canary")

    def sent(self) -> list[str]:
        return sorted(n for n, r in self.nodes.items() if r.phase != "waiting")

    def shadows(self, node: str) -> bool:
        """Whether ``node`` runs the previous version beside the new one now."""
        record = self.nodes.get(node)
        return (self.phase == "Canary" and record is not None and record.role == "canary"
                and record.phase != "waiting")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutState:
        data = dict(data)
        data["phase"] = _checked(data.get("phase", "Canary"), Phase)
        data["nodes"] = {n: RolloutNode.from_dict(r) for n, r in data.get("nodes", {}).items()}
        return cls(**data)


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reported:
    """``node`` reported the health of its inference worker of the job."""

    node: str
    health: Health


@dataclass(frozen=True)
class Tick:
    """Time passes: bake ends, health timeouts."""


@dataclass(frozen=True)
class Joined:
    """``node`` became a target of the job while the rollout runs."""

    node: str
    fps_before: float | None = None
    restarts_before: int = 0


@dataclass(frozen=True)
class Left:
    """``node`` is no longer a target of the job."""

    node: str


@dataclass(frozen=True)
class Pause:
    pass


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class Abort:
    reason: str = "aborted by the user"


Event = Reported | Tick | Joined | Left | Pause | Resume | Abort


# --- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """``node`` is to serve ``version`` (None: the initial model)."""

    node: str
    version: int | None


@dataclass(frozen=True)
class Note:
    """A condition of the job worth showing."""

    reason: str


@dataclass(frozen=True)
class Ended:
    """The rollout ended: ``ok`` every node was sent the version; else it was rolled back."""

    ok: bool
    reason: str


Action = Send | Note | Ended


@dataclass(frozen=True)
class Context:
    now: float
    policy: Policy
    online: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Baseline:
    """What a node said under the version it serves before the rollout."""

    fps: float | None = None
    restarts: int = 0


# --- the machine -------------------------------------------------------------------------------


def start(version: int | None, previous: int | None, nodes: Mapping[str, Baseline],
          ctx: Context) -> tuple[RolloutState, list[Action]]:
    """A rollout of ``version`` over ``nodes`` (which serve ``previous``): the canaries get it."""
    state = RolloutState(version=version, previous=previous, started=ctx.now, nodes={
        n: RolloutNode(fps_before=b.fps, restarts_before=b.restarts) for n, b in nodes.items()})
    actions: list[Action] = []
    count = share_of(ctx.policy.canary, len(nodes))
    canaries = _by_preference(list(nodes), ctx.online)[:count]
    for node in canaries:
        state.nodes[node].role = "canary"
        _send(state, node, ctx, actions)
    actions.append(Note(
        f"rollout of {_name(version)}: canary {_nodes(canaries)} first, then the other "
        f"{len(nodes) - len(canaries)} node(s) in waves of {ctx.policy.wave} after "
        f"{ctx.policy.bake_s:g} s of healthy reports"))
    _advance(state, ctx, actions)
    return state, actions


def handle(state: RolloutState, event: Event, ctx: Context) -> tuple[RolloutState, list[Action]]:
    """The rollout after ``event``; ``state`` is not modified."""
    s = RolloutState.from_dict(state.to_dict())
    actions: list[Action] = []
    if not s.active:
        return s, actions
    match event:
        case Reported(node=node, health=health):
            _reported(s, node, health, ctx, actions)
        case Joined(node=node, fps_before=fps, restarts_before=restarts):
            if node not in s.nodes:
                s.nodes[node] = RolloutNode(fps_before=fps, restarts_before=restarts)
        case Left(node=node):
            s.nodes.pop(node, None)
        case Pause():
            if not s.paused:
                s.paused = True
                actions.append(Note(f"rollout of {_name(s.version)} paused: no node gets it "
                                    "until resumed"))
        case Resume():
            if s.paused:
                s.paused = False
                actions.append(Note(f"rollout of {_name(s.version)} resumed"))
        case Abort(reason=reason):
            _roll_back(s, "Aborted", reason, ctx, actions)
    if s.active:
        _advance(s, ctx, actions)
    return s, actions


def _reported(s: RolloutState, node: str, health: Health, ctx: Context,
              actions: list[Action]) -> None:
    record = s.nodes.get(node)
    if record is None:
        return
    if record.phase == "waiting":
        if health.version == s.previous and health.fps is not None:
            record.fps_before = health.fps
        record.restarts_before = health.restarts
        return
    if health.error:
        _roll_back(s, "Failed", f"node {node} could not load {_name(s.version)}: {health.error}",
                   ctx, actions)
        return
    if health.restarts > record.restarts_before:
        # a worker that dies loading the version never says it serves it: count it anyway
        _roll_back(s, "Failed", f"node {node} serving {_name(s.version)}: its inference worker "
                   f"crashed {health.restarts - record.restarts_before} time(s)", ctx, actions)
        return
    if health.version != s.version:
        return
    record.health = health
    if not health.up:
        _roll_back(s, "Failed", f"node {node} serving {_name(s.version)}: its inference worker "
                   "is down", ctx, actions)
        return
    record.phase = "serving"


def _advance(s: RolloutState, ctx: Context, actions: list[Action]) -> None:
    if s.paused or not s.active:
        return
    if s.phase == "Canary":
        _canary(s, ctx, actions)
    if s.phase == "Waves":
        _waves(s, ctx, actions)


def _canary(s: RolloutState, ctx: Context, actions: list[Action]) -> None:
    policy = ctx.policy
    for node in s.canaries():
        record = s.nodes[node]
        if record.phase == "serving":
            continue
        if node not in ctx.online:
            _replace_canary(s, node, ctx, actions)
        elif record.sent_at is not None and ctx.now - record.sent_at >= policy.health_timeout_s:
            _roll_back(s, "Failed", f"canary node {node} is online but reported no health of "
                       f"{_name(s.version)} within {policy.health_timeout_s:g} s", ctx, actions)
            return
    canaries = s.canaries() or _recruit(s, ctx, actions)
    if not canaries:
        _wait(s, f"rollout of {_name(s.version)} waits for a node to come online as its canary",
              actions)
        return
    if any(s.nodes[n].phase != "serving" for n in canaries):
        return
    if s.bake_until is None:
        s.bake_until = ctx.now + policy.bake_s
        if policy.bake_s > 0:
            actions.append(Note(f"canary {_nodes(canaries)} serves {_name(s.version)}; baking "
                                f"for {policy.bake_s:g} s"))
    if ctx.now < s.bake_until:
        return
    verdicts = []
    for node in canaries:
        health = s.nodes[node].health
        missing = ("the first frames" if health is None or health.fps is None else
                   "the shadow comparison" if health.shadow and health.compared == 0 else "")
        if missing:
            # it serves the version, but what the bake judges has not come yet: wait for it,
            # not forever
            if ctx.now - s.bake_until >= policy.health_timeout_s:
                _roll_back(s, "Failed", f"canary node {node} reported no health of "
                           f"{_name(s.version)} with {missing} within "
                           f"{policy.health_timeout_s:g} s of the bake's end", ctx, actions)
            else:
                _wait(s, f"waiting for {missing} of canary node {node} with {_name(s.version)}",
                      actions)
            return
    for node in canaries:
        problem, verdict = _judge(node, s.nodes[node], policy)
        if problem:
            _roll_back(s, "Failed", problem, ctx, actions)
            return
        verdicts.append(verdict)
    s.phase = "Waves"
    s.reason = ""
    actions.append(Note(f"canary passed: {'; '.join(verdicts)}"))


def _judge(node: str, record: RolloutNode, policy: Policy) -> tuple[str, str]:
    """A canary's verdict at the end of the bake: (the reason it fails, or "", what it showed)."""
    health = record.health
    assert health is not None  # serving means it reported the version
    shown = [f"node {node}"]
    if health.fps is not None and record.fps_before:
        floor = record.fps_before * (1 - policy.max_fps_drop)
        if health.fps < floor:
            return (f"canary node {node}: {health.fps:.1f} FPS against {record.fps_before:.1f} "
                    f"under the previous version (more than {policy.max_fps_drop:.0%} "
                    "slower)"), ""
        shown.append(f"{health.fps:.1f} FPS (was {record.fps_before:.1f})")
    if health.agreement is None or health.compared == 0:
        shown.append("no shadow comparison (no previous model beside it)")
    elif health.agreement < policy.min_agreement:
        return (f"canary node {node}: agreement with the previous version "
                f"{health.agreement:.2f} < minAgreement {policy.min_agreement:g} over "
                f"{health.compared} compared frames"), ""
    else:
        shown.append(f"agreement {health.agreement:.2f} over {health.compared} frames")
    if health.hard_rate is not None:
        shown.append(f"hard-example rate {health.hard_rate:.3f}")
    return "", ", ".join(shown)


def _replace_canary(s: RolloutState, node: str, ctx: Context, actions: list[Action]) -> None:
    """An offline canary proves nothing: another online node takes its place; it keeps the
    version it was sent and gets no wait of its own."""
    record = s.nodes[node]
    record.role, record.phase = "wave", "unconfirmed"
    waiting = [n for n, r in s.nodes.items() if r.phase == "waiting" and n in ctx.online]
    spare = _by_preference(waiting, ctx.online)[:1]
    for other in spare:
        s.nodes[other].role = "canary"
        _send(s, other, ctx, actions)
    instead = f"; node {spare[0]} is the canary instead" if spare else ""
    actions.append(Note(f"canary node {node} is offline: it gets {_name(s.version)} when it "
                        f"returns{instead}"))


def _recruit(s: RolloutState, ctx: Context, actions: list[Action]) -> list[str]:
    """A canary when none is left: an online node that already has the version (it came back),
    else one that waits for it."""
    back = [n for n, r in s.nodes.items() if r.phase == "unconfirmed" and n in ctx.online]
    if back:
        node = sorted(back)[0]
        record = s.nodes[node]
        record.role, record.phase, record.sent_at = "canary", "sent", ctx.now
        actions.append(Note(f"node {node} is back online: it is the canary of {_name(s.version)}"))
        return [node]
    waiting = sorted(n for n, r in s.nodes.items() if r.phase == "waiting" and n in ctx.online)
    if not waiting:
        return []
    s.nodes[waiting[0]].role = "canary"
    _send(s, waiting[0], ctx, actions)
    actions.append(Note(f"node {waiting[0]} is the canary of {_name(s.version)}"))
    return waiting[:1]


def _waves(s: RolloutState, ctx: Context, actions: list[Action]) -> None:
    policy = ctx.policy
    for node, record in sorted(s.nodes.items()):
        if record.phase != "sent":
            continue
        if node not in ctx.online:
            record.phase = "unconfirmed"
            actions.append(Note(f"node {node} went offline: it gets {_name(s.version)} when it "
                                "returns; the rollout goes on"))
        elif record.sent_at is not None and ctx.now - record.sent_at >= policy.health_timeout_s:
            record.phase = "unconfirmed"
            actions.append(Note(f"node {node} reported no health of {_name(s.version)} within "
                                f"{policy.health_timeout_s:g} s; the rollout goes on without it"))
    if any(r.phase == "sent" for r in s.nodes.values()):
        return
    waiting = [n for n, r in s.nodes.items() if r.phase == "waiting"]
    online = [n for n in sorted(waiting) if n in ctx.online]
    if online:
        wave = online[:share_of(policy.wave, len(s.nodes))]
        s.waves += 1
        for node in wave:
            _send(s, node, ctx, actions)
        actions.append(Note(f"wave {s.waves}: {_name(s.version)} to {_nodes(wave)}"))
        return
    offline = sorted(waiting)
    for node in offline:
        _send(s, node, ctx, actions)
        s.nodes[node].phase = "unconfirmed"
    s.phase, s.ended = "Completed", ctx.now
    later = f"; offline {_nodes(offline)} get it when they return" if offline else ""
    s.reason = f"{_name(s.version)} sent to every node{later}"
    actions.append(Ended(True, s.reason))


def _roll_back(s: RolloutState, phase: Phase, reason: str, ctx: Context,
               actions: list[Action]) -> None:
    """Every node sent the version serves the previous one again; the rest never got it."""
    sent = s.sent()
    for node in sent:
        actions.append(Send(node, s.previous))
        s.nodes[node].phase = "waiting"
    s.phase, s.reason, s.ended = phase, reason, ctx.now
    back = f"; {_nodes(sent)} back to {_name(s.previous)}" if sent else ""
    actions.append(Ended(False, f"{reason}{back}"))


def _send(s: RolloutState, node: str, ctx: Context, actions: list[Action]) -> None:
    record = s.nodes[node]
    record.phase, record.sent_at = "sent", ctx.now
    actions.append(Send(node, s.version))


def _wait(s: RolloutState, reason: str, actions: list[Action]) -> None:
    if s.reason != reason:
        s.reason = reason
        actions.append(Note(reason))


def _by_preference(nodes: list[str], online: frozenset[str]) -> list[str]:
    """Online nodes first, then by name: the order canaries and waves are picked in."""
    return sorted(nodes, key=lambda n: (n not in online, n))


def _name(version: int | None) -> str:
    return f"model version {version}" if version is not None else "the initial model"


def _nodes(names: list[str]) -> str:
    if not names:
        return "no node"
    return f"node{'s' if len(names) > 1 else ''} {', '.join(sorted(names))}"


__all__ = [
    "Abort", "Action", "Baseline", "Context", "Ended", "Event", "Health", "Joined", "Left",
    "Note", "Pause", "Policy", "Reported", "Resume", "RolloutNode", "RolloutState", "Send",
    "Tick", "handle", "start",
]
