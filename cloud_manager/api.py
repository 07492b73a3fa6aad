"""The cloud manager's request/response API: apply, get, describe, delete, create_namespace,
pause, resume, rollback, hardex_list, hardex_export, label_import. Each request runs inside the store transaction the manager opened for it.

``resource`` names follow kubectl's habits: ``jobs``/``il``/``incrementallearningjob``,
``datasets``/``ds``, ``models``, ``nodes``, ``namespaces``/``ns``, ``versions`` (registered model
versions). Verbs answer with store rows and job state as they are; :func:`to_json` turns them
into the answer's JSON ``data`` in one place, and the CLI renders it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, JsonValue

from cloud_manager import rollout as ro
from cloud_manager import state_machine as sm
from cloud_manager.hardex_inbox import HardExampleInbox
from cloud_manager.outgoing import Outgoing
from cloud_manager.store import Store
from cloud_manager.task_builder import JobInputs, task_id
from cloud_manager.versions import ModelVersion
from protocol import topics
from protocol.errors import ProtocolError
from protocol.manifest_yaml import load_documents
from protocol.manifests import IncrementalLearningJob, ManifestError, ObjectMeta
from protocol.messages import ApiRequest, ApiResponse, NodeStatus
from protocol.topics import check_name

JOB = "IncrementalLearningJob"
KIND_ALIASES: dict[str, str] = {
    **dict.fromkeys(("jobs", "job", "il", "ilj", "incrementallearningjob",
                     "incrementallearningjobs"), JOB),
    **dict.fromkeys(("datasets", "dataset", "ds"), "Dataset"),
    **dict.fromkeys(("models", "model"), "Model"),
    **dict.fromkeys(("nodes", "node", "no"), "Node"),
    **dict.fromkeys(("namespaces", "namespace", "ns"), "Namespace"),
    **dict.fromkeys(("versions", "version", "modelversions"), "ModelVersion"),
}
APPLY_ORDER = {"Dataset": 0, "Model": 1, JOB: 2}


#: Hard examples per ``hardex_list`` answer: sidecars with boxes stay far under the 4 MiB cap.
LIST_PAGE = 1000
#: Image bytes in one ``hardex_export`` answer, and the largest piece of one image in it; both
#: leave room under the 4 MiB payload cap for the message around them.
EXPORT_BUDGET = 3 * 1024 * 1024
EXPORT_PART = 1024 * 1024


#: What a verb returns: status code, message, answer data (see :func:`to_json`), messages.
VerbResult = tuple[int, str, Any, list[Outgoing]]


@dataclass(frozen=True)
class Attached:
    """A verb's answer data with binary attachments (sent as msgpack ``bin``)."""

    data: Any
    attachments: dict[str, bytes]


@dataclass(frozen=True)
class LabelTarget:
    """Where a job's labelled samples go: its Dataset (``namespace/name``), the index ``url``
    on the dataset's ``node``, and the job's class names."""

    job: str
    dataset: str
    url: str
    node: str
    online: bool
    class_names: tuple[str, ...]


#: the types :func:`to_json` returns as they are, told by exact type first: an answer's values
#: are mostly these, and the checks for dataclasses and models cost more than the values
_PLAIN = frozenset({str, int, float, bool, type(None)})


def to_json(value: object) -> JsonValue:
    """The JSON form of a verb's answer: dataclasses (store rows, job state) become objects of
    their fields, pydantic models their JSON dump, tuples lists."""
    if type(value) in _PLAIN:
        return value  # type: ignore[return-value]  # one of JsonValue's plain types
    if type(value) is dict:
        return {str(k): to_json(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if value is None or isinstance(value, str | int | float):
        return value
    raise TypeError(f"an API answer cannot carry a {type(value).__name__}")


def answer(response: ApiResponse, data: object) -> ApiResponse:
    """``response`` with ``data`` as its JSON. :func:`to_json` builds nothing but JSON values,
    so pydantic's check of ``JsonValue`` (a Python call per value: most of the time of a
    ``get nodes`` over a hundred nodes, asked again and again while a backlog drains) is
    skipped; the other fields were validated with ``response``."""
    return response.model_copy(update={"data": to_json(data)})


def version_row(job: str, version: ModelVersion) -> dict[str, Any]:
    """A registered version as ``get versions`` and ``describe`` list it."""
    return {"job": job, "name": f"{job}:{version.version}", **dataclasses.asdict(version)}


_ROLLOUT_COMMANDS = {"pause": sm.RolloutCommand("pause"), "resume": sm.RolloutCommand("resume"),
                     "abort": sm.RolloutCommand("abort")}


def rollout_summary(state: sm.JobState) -> dict[str, Any] | None:
    """The job's last staged rollout as ``rollout status`` and ``describe`` show it."""
    rollout = state.rollout
    if rollout is None:
        return None
    return {"version": rollout.version, "previous": rollout.previous, "phase": rollout.phase,
            "paused": rollout.paused, "started": rollout.started, "ended": rollout.ended,
            "bake_until": rollout.bake_until, "waves": rollout.waves, "reason": rollout.reason,
            "canaries": rollout.canaries(), "summary": _phase(rollout)}


def _phase(rollout: ro.RolloutState) -> str:
    """``Canary (paused): ...`` in one line."""
    sent = len(rollout.sent())
    text = f"{rollout.phase}{' (paused)' if rollout.paused else ''}: version {rollout.version} " \
           f"sent to {sent} of {len(rollout.nodes)} node(s)"
    return f"{text}; {rollout.reason}" if rollout.reason else text


def _rollout_role(state: sm.JobState, node: str) -> str:
    """A node's part in the job's rollout: ``canary, serving``, ``wave, waiting``; "" when
    none runs."""
    rollout = state.rollout
    record = rollout.nodes.get(node) if rollout is not None and rollout.active else None
    return f"{record.role}, {record.phase}" if record is not None else ""


def _listed_node(spec: dict[str, Any], stage: str) -> Any:
    """A job's node for a listing, from the manifest as applied, in either form: ``nodeName``
    (the guide's form) or the stage template's ``nodeName`` (Sedna's pod-template form)."""
    section = spec.get(stage) or {}
    own = section.get("nodeName") if stage == "deploySpec" else spec.get("nodeName")
    template = (section.get("template") or {}).get("spec") or {}
    return own or template.get("nodeName")


def _whole_number(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ApiError(400, f"{what} must be a whole number >= 0, got {value!r}")
    return value


def camera_summary(status: NodeStatus) -> str | None:
    """What ``get nodes`` shows a node's cameras serving, per inference task and camera
    (``helmet-infer-0: gate=3 crane=not serving``); None for a node without cameras."""
    parts = []
    for task, cameras in sorted(status.cameras.items()):
        shown = " ".join(
            f"{name}=" + ("not serving" if c.error or not c.serving
                          else "initial" if c.version is None else str(c.version))
            for name, c in sorted(cameras.items()))
        parts.append(f"{task}: {shown}")
    return ", ".join(parts) or None


def _live_view(status: NodeStatus) -> str | None:
    """The node's live-view address, as its agent reports it (an http(s) URL, else none: the
    value comes from the node and ends up as a link in people's browsers)."""
    url = status.capabilities.get("live_view")
    return url if isinstance(url, str) and url.startswith(("http://", "https://")) else None


def _summary(meta: dict[str, Any]) -> dict[str, Any]:
    """A hard example's sidecar with what ``hardex list`` shows in its columns."""
    sidecar = meta.get("sidecar") or {}
    return {
        **meta,
        "id": meta.get("sha256", ""),
        "short_id": meta.get("sha256", "")[:12],
        "source": sidecar.get("source", ""),
        "camera": sidecar.get("camera", ""),
        "boxes": len(sidecar.get("boxes") or []),
        "model_version": sidecar.get("model_version"),
        "time": sidecar.get("time") or meta.get("received"),
        "mining": sidecar.get("mining", ""),
        # why the node kept it: rule, empty-frame or detection-drop (blind-spot mining)
        "reason": sidecar.get("mining_reason") or "-",
        "labelled": bool(meta.get("labelled")),
    }


class ApiError(Exception):
    def __init__(self, code: int, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.errors = code, message, errors or []


def resolve_kind(resource: str) -> str:
    kind = KIND_ALIASES.get(resource.strip().lower())
    if kind is None:
        raise ApiError(400, f"unknown resource type {resource!r}; use one of: jobs (il), "
                            "datasets, models, nodes, namespaces, versions")
    return kind


class JobControl(Protocol):
    """What the API asks of the job side (the :class:`~cloud_manager.manager.Manager`): the API
    changes manifests, the job side turns the change into job events and messages."""

    inbox: HardExampleInbox | None

    def inputs(self, namespace: str, name: str) -> JobInputs | None: ...

    def job_event(self, namespace: str, name: str, event: sm.Event, now: float,
                  ctx: sm.Context | None = None) -> list[Outgoing]: ...

    def dataset_node(self, namespace: str, name: str) -> str | None: ...

    def status_message(self, state: sm.JobState) -> Outgoing: ...

    def desired_for(self, node: str) -> list[Outgoing]: ...

    def target_nodes(self, job: str) -> frozenset[str] | None: ...

    def online_nodes(self) -> frozenset[str]: ...


class ApiHandler:
    def __init__(self, store: Store, manager: JobControl) -> None:
        self.store = store
        self.manager = manager

    def handle(self, request: ApiRequest, now: float) -> tuple[ApiResponse, list[Outgoing]]:
        verb = request.verb
        method = getattr(self, f"verb_{verb}", None)
        try:
            if method is None:
                raise ApiError(400, f"verb {verb!r} is not supported by this cloud manager")
            code, message, data, out = method(request, now)
        except ApiError as exc:
            return ApiResponse(request_id=request.request_id, ok=False, code=exc.code,
                               message=exc.message, errors=exc.errors), []
        attachments: dict[str, bytes] = {}
        if isinstance(data, Attached):
            data, attachments = data.data, data.attachments
        return answer(ApiResponse(request_id=request.request_id, ok=True, code=code,
                                  message=message, attachments=attachments), data), out

    # -- apply --

    def verb_apply(self, request: ApiRequest, now: float) -> VerbResult:
        try:
            manifests = load_documents(request.body, None)
        except ManifestError as exc:
            raise ApiError(400, "invalid manifest", exc.errors) from None
        if not manifests:
            raise ApiError(400, "no manifest in the request body")
        manifests.sort(key=lambda m: APPLY_ORDER[m.kind_name])
        batch = {m.key for m in manifests}
        errors = []
        for m in manifests:
            kind, ns, name = m.key
            if not self.store.namespace_exists(ns):
                errors.append(f"{kind}/{ns}/{name}: namespace {ns!r} does not exist; create it "
                              f"with `edgeloop create namespace {ns}`")
            if isinstance(m, IncrementalLearningJob):
                for ref in m.references():
                    if ref not in batch and self.store.get_resource(*ref) is None:
                        errors.append(f"{kind}/{ns}/{name}: references {ref[0]} {ref[1]}/{ref[2]}, "
                                      "which does not exist; apply it first")
        if errors:
            raise ApiError(404, "not applied: missing namespace or referenced resource", errors)
        results, out, created = [], [], False
        for m in manifests:
            kind, ns, name = m.key
            body = m.model_dump(mode="json", by_alias=True, exclude_unset=True)
            outcome = self.store.put_resource(kind, ns, name, body, now)
            created |= outcome == "created"
            results.append({"kind": kind, "namespace": ns, "name": name, "result": outcome})
            if outcome == "unchanged":
                continue
            if isinstance(m, IncrementalLearningJob):
                out += self._job_applied(m, outcome, now)
            else:
                for state in self.store.jobs():
                    inputs = self.manager.inputs(state.namespace, state.name)
                    if inputs and (kind, ns, name) in inputs.job.references():
                        out += self.manager.job_event(ns, state.name, sm.SpecChanged(), now)
        message = results[0]["result"] if len(results) == 1 else ", ".join(
            f"{r['kind']}/{r['name']} {r['result']}" for r in results)
        return (201 if created else 200), message, results, out

    def _job_applied(self, job: IncrementalLearningJob, outcome: str, now: float) -> list[Outgoing]:
        ns, name = job.metadata.namespace, job.metadata.name
        out: list[Outgoing] = []
        if outcome == "created" or self.store.load_job(ns, name) is None:
            state = sm.new_job(ns, name, now)
            self.store.save_job(state, now)
            out.append(self.manager.status_message(state))
            out += self.manager.job_event(ns, name, sm.Retarget(), now)
            known = self.store.dataset_samples(ns, job.spec.dataset.name)
            owner = self.manager.dataset_node(ns, job.spec.dataset.name)
            if known is not None and known.node == owner:
                out += self.manager.job_event(ns, name, sm.SamplesReported(known.samples), now)
        else:
            out += self.manager.job_event(ns, name, sm.SpecChanged(), now)
        # the inference task itself may have changed (parameters, mining): every target again
        for node in sorted(self.manager.target_nodes(f"{ns}/{name}") or ()):
            out += self.manager.desired_for(node)
        return out

    # -- reading --

    def verb_get(self, request: ApiRequest, now: float) -> VerbResult:
        kind = resolve_kind(request.resource or "jobs")
        namespace = None if request.args.get("all_namespaces") else request.namespace
        rows = self._rows(kind, namespace)
        if request.name:
            rows = [r for r in rows if r.get("name") == request.name]
            if not rows:
                raise ApiError(404, f"{kind} {request.namespace}/{request.name} not found")
        return 200, f"{len(rows)} {kind}", {"kind": kind, "items": rows}, []

    def _rows(self, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        store = self.store
        if kind == "Namespace":
            return [{"name": n} for n in store.namespaces()]
        if kind == "Node":
            return [{
                "name": n.name, "state": n.state, "boot_id": n.boot_id,
                "agent_version": n.status.agent_version,
                "outbox_backlog": n.status.outbox_backlog, "updated": n.updated,
                "labels": n.status.labels,
                "live_view": _live_view(n.status),
                # inference task -> the model version its worker serves (0: none deployed yet)
                "serving": dict(n.status.serving) if n.state == "online" else {},
                "cameras": camera_summary(n.status) if n.state == "online" else None,
                "uploads": n.status.uploads.summary() if n.status.uploads else None,
                "upload_counters": (n.status.uploads.model_dump() if n.status.uploads
                                    else None),
            } for n in store.nodes()]
        if kind == "ModelVersion":
            return [version_row(v.job, v.model) for v in store.every_model_version()
                    if namespace is None or v.job.startswith(f"{namespace}/")]
        rows = []
        for r in store.resources(kind, namespace):
            # the manifest as applied: a listing shows it even when it no longer parses
            spec = r.manifest.get("spec", {})
            row: dict[str, Any] = {"namespace": r.namespace, "name": r.name,
                                   "generation": r.generation, "created": r.created}
            if kind == "Dataset":
                samples = store.dataset_samples(r.namespace, r.name)
                row |= {"url": spec.get("url"), "format": spec.get("format"),
                        "node": spec.get("nodeName"),
                        "samples": samples.samples if samples else None}
            elif kind == "Model":
                row |= {"url": spec.get("url"), "format": spec.get("format")}
            else:
                state = store.load_job(r.namespace, r.name)
                if state is not None:
                    last = state.conditions[-1] if state.conditions else None
                    row |= {
                        "stage": state.stage, "state": state.state, "round": state.round,
                        "samples": state.samples, "new_samples": max(0, state.samples - state.baseline),
                        "deployed_version": state.deployed_version,
                        "serving_version": state.serving_version, "paused": state.paused,
                        "reason": last.reason if last else "",
                        "node": _listed_node(spec, "trainSpec"),
                        "deploy_node": ",".join(sorted(state.nodes))
                        or _listed_node(spec, "deploySpec"),
                    }
            rows.append(row)
        return rows

    def verb_describe(self, request: ApiRequest, now: float) -> VerbResult:
        kind = resolve_kind(request.resource or "jobs")
        if kind in ("Dataset", "Model", JOB):
            resource = self.store.get_resource(kind, request.namespace, request.name)
            if resource is None:
                raise ApiError(404, f"{kind} {request.namespace}/{request.name} not found")
            data: dict[str, Any] = {"kind": kind, "resource": resource}
            if kind == JOB:
                ref = f"{request.namespace}/{request.name}"
                state = self.store.load_job(request.namespace, request.name)
                # the whole history, not the last conditions a status message carries
                data["status"] = sm.status_fields(state) | {"conditions": state.conditions} \
                    if state else None
                failed = state.failed_versions if state else {}
                data["versions"] = [version_row(ref, v) | {"rollout": failed.get(v.version, "")}
                                    for v in self.store.model_versions(ref)]
                data["tasks"] = self.store.tasks(ref)
                data["targets"] = self._target_rows(state) if state else []
                data["rollout"] = rollout_summary(state) if state else None
            elif kind == "Dataset":
                data["samples"] = self.store.dataset_samples(request.namespace, request.name)
            return 200, "", data, []
        rows = [r for r in self._rows(kind, None) if r.get("name") == request.name]
        if not rows:
            raise ApiError(404, f"{kind} {request.name} not found")
        return 200, "", {"kind": kind, "resource": rows[0]}, []

    def _target_rows(self, state: sm.JobState) -> list[dict[str, Any]]:
        """Each node the job deploys to: the version it should serve, the one it says it
        serves, and, when it cannot serve, why (never seen, offline)."""
        rows = []
        for name, target in sorted(state.nodes.items()):
            node = self.store.node(name)
            health = node.state if node else "never seen: no status from this node yet"
            cameras = node.status.cameras.get(task_id(state.namespace, state.name, 0, "inference"),
                                              {}) if node else {}
            reported = target.health
            rows.append({"node": name, "state": node.state if node else "unknown",
                         "desired": target.desired, "serving": target.serving,
                         "cameras": {c: s.model_dump() for c, s in sorted(cameras.items())},
                         "health": health, "seen": node.updated if node else None,
                         "labels": node.status.labels if node else {},
                         "rollout": _rollout_role(state, name),
                         "fps": reported.fps if reported else None,
                         "agreement": reported.agreement if reported else None,
                         "uploads": (node.status.uploads.summary()
                                     if node and node.status.uploads else None)})
        return rows

    # -- hard examples and labels --

    def _job_ref(self, request: ApiRequest) -> str:
        """``namespace/name`` of the request's job; both become folder names, so both must be
        valid names."""
        try:
            check_name(request.namespace, "namespace")
            check_name(request.name, "job")
        except ProtocolError as exc:
            raise ApiError(400, exc.reason) from None
        return f"{request.namespace}/{request.name}"

    def _inbox(self, request: ApiRequest) -> tuple[HardExampleInbox, str]:
        inbox = self.manager.inbox
        if inbox is None:
            raise ApiError(400, "this cloud manager keeps no hard-example inbox")
        job = self._job_ref(request)
        if self.store.get_resource(JOB, request.namespace, request.name) is None \
                and not inbox.job_dir(job).is_dir():
            raise ApiError(404, f"{JOB} {job} not found")
        return inbox, job

    def verb_hardex_list(self, request: ApiRequest, now: float) -> VerbResult:
        """A page (``offset``, ``limit``) of a job's hard examples: each sidecar with a summary
        (``id``, ``boxes``, ``model_version``, ``time``, ``labelled``) and the job's class names."""
        inbox, job = self._inbox(request)
        offset = _whole_number(request.args.get("offset", 0), "offset")
        limit = _whole_number(request.args.get("limit", LIST_PAGE), "limit") or LIST_PAGE
        every = list(inbox.examples(job))
        items = [_summary(meta) for meta in every[offset:offset + limit]]
        inputs = self.manager.inputs(request.namespace, request.name)
        return 200, f"{len(every)} hard examples", {
            "job": job, "root": str(inbox.job_dir(job)), "total": len(every), "offset": offset,
            "items": items, "class_names": list(inputs.class_names()) if inputs else None,
        }, []

    def verb_hardex_export(self, request: ApiRequest, now: float) -> VerbResult:
        """Image bytes of hard examples: ``parts`` asks for ``{"id": sha256, "offset": n}``; the
        answer carries as many as fit in :data:`EXPORT_BUDGET`, each at most
        :data:`EXPORT_PART` bytes (attachment ``<id>:<offset>``), so an image of any size
        arrives in pieces and an answer stays under the message limit."""
        inbox, job = self._inbox(request)
        wanted = request.args.get("parts")
        if not isinstance(wanted, list):
            raise ApiError(400, "parts: expected a list of {\"id\": sha256, \"offset\": bytes}")
        parts: list[dict[str, Any]] = []
        missing: list[str] = []
        attachments: dict[str, bytes] = {}
        budget = EXPORT_BUDGET
        for i, want in enumerate(wanted):
            sha256 = want.get("id") if isinstance(want, dict) else None
            if not isinstance(want, dict) or not isinstance(sha256, str):
                raise ApiError(400, f"parts.{i}: expected {{\"id\": sha256, \"offset\": bytes}}")
            offset = _whole_number(want.get("offset", 0), f"parts.{i}.offset")
            length = min(EXPORT_PART, budget)
            if length <= 0:
                break
            try:
                data, size = inbox.read_image(job, sha256, offset, length)
            except KeyError:
                missing.append(sha256)
                continue
            attachments[f"{sha256}:{offset}"] = data
            parts.append({"id": sha256, "offset": offset, "length": len(data), "size": size})
            budget -= len(data)
        return 200, f"{len(parts)} parts", Attached(
            {"job": job, "parts": parts, "missing": missing}, attachments), []

    def label_target(self, request: ApiRequest) -> LabelTarget:
        """Where labelled samples of the request's job go: the job's Dataset and the node
        holding its index (``nodeName``), with the job's class names."""
        job = self._job_ref(request)
        inputs = self.manager.inputs(request.namespace, request.name)
        if inputs is None:
            if self.store.get_resource(JOB, request.namespace, request.name) is None:
                raise ApiError(404, f"{JOB} {job} not found")
            raise ApiError(409, f"{JOB} {job} references a resource that does not exist")
        node = inputs.dataset_node
        return LabelTarget(
            job=job,
            dataset=f"{inputs.dataset.metadata.namespace}/{inputs.dataset.metadata.name}",
            url=inputs.dataset.spec.url,
            node=node,
            online=node in self.manager.online_nodes(),
            class_names=inputs.class_names(),
        )

    def verb_label_import(self, request: ApiRequest, now: float) -> VerbResult:
        """Without samples: where the job's labels would go (the CLI asks this first). Samples
        themselves are forwarded by the daemon (:mod:`cloud_manager.labels`), which waits for
        the node's answers."""
        if request.args.get("samples"):
            raise ApiError(400, "label_import with samples needs the cloud manager daemon")
        target = self.label_target(request)
        return 200, f"labels go to {target.dataset} on node {target.node}", target, []

    # -- changing --

    def verb_delete(self, request: ApiRequest, now: float) -> VerbResult:
        kind = resolve_kind(request.resource or "jobs")
        ns, name = request.namespace, request.name
        if kind not in ("Dataset", "Model", JOB):
            raise ApiError(400, f"{kind} cannot be deleted through the API")
        if self.store.get_resource(kind, ns, name) is None:
            raise ApiError(404, f"{kind} {ns}/{name} not found")
        out: list[Outgoing] = []
        if kind == JOB:
            state = self.store.load_job(ns, name)
            nodes = set(state.nodes if state else ()) | (
                self.manager.target_nodes(f"{ns}/{name}") or set())
            out += self.manager.job_event(ns, name, sm.Deleted(), now)
            self.store.delete_job(ns, name)
            self.store.delete_resource(kind, ns, name)
            out.append(Outgoing(topics.job_status(ns, name), None, retain=True))
            for node in sorted(nodes):
                out += self.manager.desired_for(node)
        else:
            users = [f"{s.namespace}/{s.name}" for s in self.store.jobs()
                     if (inputs := self.manager.inputs(s.namespace, s.name))
                     and (kind, ns, name) in inputs.job.references()]
            if users:
                raise ApiError(409, f"{kind} {ns}/{name} is used by job {', '.join(users)}; "
                                    "delete the job first")
            self.store.delete_resource(kind, ns, name)
        return 200, "deleted", {"kind": kind, "namespace": ns, "name": name}, out

    def verb_create_namespace(self, request: ApiRequest, now: float) -> VerbResult:
        name = request.name or request.namespace
        try:
            ObjectMeta(name="x", namespace=name)
        except Exception:  # pydantic's error names the rule; ours says it in words
            raise ApiError(400, f"{name!r} is not a valid namespace: use at most 63 lowercase "
                                "letters, digits and '-', starting and ending with a letter or digit") from None
        created = self.store.create_namespace(name, now)
        return (201 if created else 200), "created" if created else "unchanged", {"name": name}, []

    def _pause_resume(self, request: ApiRequest, now: float, event: sm.Event,
                      word: str) -> VerbResult:
        ns, name = request.namespace, request.name
        if self.store.load_job(ns, name) is None:
            raise ApiError(404, f"{JOB} {ns}/{name} not found")
        out = self.manager.job_event(ns, name, event, now)
        state = self.store.load_job(ns, name)
        return 200, word, {"paused": state.paused if state else None}, out

    def verb_rollback(self, request: ApiRequest, now: float) -> VerbResult:
        version = request.args.get("version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise ApiError(400, f"version must be a whole number, got {version!r}")
        at_once = request.args.get("now", False)
        if not isinstance(at_once, bool):
            raise ApiError(400, f"now must be true or false, got {at_once!r}")
        try:
            code, _, _, out = self._pause_resume(request, now, sm.RolledBack(version, at_once),
                                                 "rolled back")
        except sm.RollbackError as exc:
            raise ApiError(409, str(exc)) from None
        state = self.store.load_job(request.namespace, request.name)
        serving = state.deployed_version if state else None
        rollout = state.rollout if state else None
        if rollout is not None and rollout.active and rollout.version == serving:
            message = f"rolling out version {serving}: {_phase(rollout)}"
        else:
            message = f"serving version {serving}"
        return code, message, {"deployed_version": serving}, out

    def verb_rollout(self, request: ApiRequest, now: float) -> VerbResult:
        """``rollout status|pause|resume|abort``: the job's staged rollout, shown or steered."""
        command = request.args.get("command", "status")
        ns, name = request.namespace, request.name
        out: list[Outgoing] = []
        if command != "status":
            event = _ROLLOUT_COMMANDS.get(command) if isinstance(command, str) else None
            if event is None:
                raise ApiError(400, "command must be status, pause, resume or abort, got "
                               f"{command!r}")
            try:
                _, _, _, out = self._pause_resume(request, now, event, str(command))
            except sm.RolloutError as exc:
                raise ApiError(409, str(exc)) from None
        state = self.store.load_job(ns, name)
        if state is None:
            raise ApiError(404, f"{JOB} {ns}/{name} not found")
        summary = rollout_summary(state)
        message = _phase(state.rollout) if state.rollout else "no rollout yet"
        return 200, message, {"rollout": summary, "targets": self._target_rows(state)}, out

    def verb_pause(self, request: ApiRequest, now: float) -> VerbResult:
        return self._pause_resume(request, now, sm.Paused(), "paused")

    def verb_resume(self, request: ApiRequest, now: float) -> VerbResult:
        return self._pause_resume(request, now, sm.Resumed(), "resumed")

