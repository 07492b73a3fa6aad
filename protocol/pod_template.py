"""The pod-template form of a job stage, as Sedna's manifests have written it since 2021.

Sedna's ``trainSpec``, ``evalSpec`` and ``deploySpec`` carry a Kubernetes ``template`` (a
``PodTemplateSpec``) instead of the guide's ``workerSpec``. edgeloop runs no containers, so a
template is read for what it says about the worker and nothing more:

- ``spec.nodeName``: the node that runs the stage;
- the one container's ``command`` / ``args`` / ``workingDir``: the Python boot file and the
  folder it lives in (Sedna's example images run ``python`` in ``/home/work``, with the script
  in ``args``);
- ``env``: the worker's parameters, exactly as ``workerSpec.parameters`` would give them;
- ``image`` and ``resources``: recorded and shown, not enforced (the worker runs in the agent's
  Python, under the agent's limits).

Fields that only mean something to Kubernetes (``volumes``, ``volumeMounts``,
``imagePullPolicy``, probes, ...) are accepted and kept, so that a manifest written for Sedna
loads unchanged: paths in ``env`` are then paths on the node itself. Fields whose meaning
edgeloop cannot honour (placement by ``nodeSelector``, values from ``valueFrom`` secrets, several
containers) are refused with the reason, and any other name is an unknown field as everywhere.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Field, model_validator

from protocol.manifest_base import ManifestPart, NonEmpty, invalid

#: Where a relative boot file is looked for when the container names no ``workingDir``: the
#: ``WORKDIR`` of Sedna's example images, which copy their scripts there.
DEFAULT_WORKING_DIR = "/home/work"

# Kubernetes fields with no meaning outside a cluster: accepted, kept, ignored.
_KUBERNETES_ONLY_CONTAINER = frozenset({
    "imagePullPolicy", "volumeMounts", "volumeDevices", "ports", "livenessProbe",
    "readinessProbe", "startupProbe", "lifecycle", "securityContext", "terminationMessagePath",
    "terminationMessagePolicy", "stdin", "stdinOnce", "tty", "resizePolicy", "restartPolicy",
})
_KUBERNETES_ONLY_POD = frozenset({
    "volumes", "restartPolicy", "terminationGracePeriodSeconds", "activeDeadlineSeconds",
    "dnsPolicy", "dnsConfig", "serviceAccountName", "serviceAccount",
    "automountServiceAccountToken", "hostNetwork", "hostPID", "hostIPC", "hostUsers",
    "shareProcessNamespace", "securityContext", "imagePullSecrets", "hostname", "subdomain",
    "schedulerName", "tolerations", "hostAliases", "priorityClassName", "priority",
    "readinessGates", "runtimeClassName", "enableServiceLinks", "preemptionPolicy", "overhead",
    "topologySpreadConstraints", "setHostnameAsFQDN", "os", "schedulingGates", "resourceClaims",
})
# Kubernetes fields edgeloop cannot honour, with what to write instead.
_UNSUPPORTED_CONTAINER = {
    "envFrom": "environment from ConfigMaps or Secrets needs Kubernetes; list each variable "
               "under env with its value",
}
_UNSUPPORTED_POD = {
    "nodeSelector": "edgeloop places a stage by node name only; set nodeName",
    "affinity": "edgeloop places a stage by node name only; set nodeName",
    "initContainers": "edgeloop runs one worker process per stage, nothing before it",
    "ephemeralContainers": "edgeloop runs one worker process per stage",
}
_PYTHON_RE = re.compile(r"^python[0-9.]*$")


def _check_keys(data: Any, fields: type[ManifestPart], kubernetes_only: frozenset[str],
                unsupported: dict[str, str]) -> Any:
    """Refuse unsupported and unknown keys of a mapping that also allows Kubernetes-only ones."""
    if not isinstance(data, dict):
        return data
    known = {f.alias or name for name, f in fields.model_fields.items()}
    for key in data:
        if key in unsupported:
            raise invalid(f"not supported: {unsupported[key]}", path=str(key))
        if key not in known and key not in kubernetes_only:
            allowed = ", ".join(sorted(known))
            raise invalid(f"unknown field; allowed: {allowed} and Kubernetes' own fields, "
                          "which are kept and ignored", path=str(key))
    return data


def _number_as_text(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


class EnvVar(ManifestPart):
    """One ``{name, value}`` of a container's ``env``: a worker parameter."""

    name: NonEmpty
    value: Annotated[str, BeforeValidator(_number_as_text)] = ""

    @model_validator(mode="before")
    @classmethod
    def _no_value_from(cls, data: Any) -> Any:
        if isinstance(data, dict) and "valueFrom" in data:
            raise invalid("not supported: a value from a Secret, ConfigMap or field needs "
                          "Kubernetes; give the value itself", path="valueFrom")
        return data


Quantity = str | int | float


class Resources(ManifestPart):
    """``resources`` of a container, recorded as written (``memory: 2Gi``, ``cpu: 500m``)."""

    model_config = ConfigDict(extra="allow")  # ``claims`` and future Kubernetes fields

    limits: dict[str, Quantity] = Field(default_factory=dict)
    requests: dict[str, Quantity] = Field(default_factory=dict)


class Container(ManifestPart):
    """The container of a stage: what runs (``command``/``args``), where, with which ``env``."""

    model_config = ConfigDict(extra="allow")  # Kubernetes-only fields, checked below

    name: str | None = None
    image: str | None = None
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    working_dir: str | None = None
    env: list[EnvVar] = Field(default_factory=list)
    resources: Resources | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return _check_keys(data, cls, _KUBERNETES_ONLY_CONTAINER, _UNSUPPORTED_CONTAINER)

    @model_validator(mode="after")
    def _runs_a_boot_file(self) -> Container:
        self.boot_location()
        seen: dict[str, int] = {}
        for i, variable in enumerate(self.env):
            if variable.name in seen:
                raise invalid(f"{variable.name!r} appears twice (items {seen[variable.name]} "
                              f"and {i})", path=f"env[{i}].name")
            seen[variable.name] = i
        return self

    def boot_location(self) -> tuple[str, str]:
        """``(scriptDir, scriptBootFile)`` of what the container runs.

        The interpreter is the agent's own Python, so ``command`` may only name ``python``
        (``python3``, ``/usr/bin/python3.10``, ...) or be left out, as Sedna's images do with
        ``ENTRYPOINT ["python"]``; the first remaining argument is the boot file.
        """
        argv = list(self.command) + list(self.args)
        where = "command" if self.command else "args"
        if self.command and _PYTHON_RE.match(posixpath.basename(self.command[0])):
            argv = argv[1:]
        elif self.command and not self.command[0].endswith(".py"):
            raise invalid(
                f"{self.command[0]!r} is not python: the agent runs a Python boot file with its "
                "own interpreter; name the script in args (or command: [python, script.py])",
                path="command[0]",
            )
        if not argv:
            raise invalid("the boot file is missing: name the script in args, "
                          "e.g. args: [\"train.py\"]", path=where)
        script, rest = argv[0], argv[1:]
        if script.startswith("-"):
            raise invalid(f"interpreter option {script!r} is not supported: the first argument "
                          "must be the boot file", path=where)
        if rest:
            raise invalid(f"arguments after the boot file ({' '.join(rest)}) are not passed to "
                          "the worker: give them as env variables", path=where)
        folder = posixpath.join(self.working_dir or DEFAULT_WORKING_DIR, posixpath.dirname(script))
        return posixpath.normpath(folder), posixpath.basename(script)


class PodSpec(ManifestPart):
    """``template.spec``: the stage's node and its one container."""

    model_config = ConfigDict(extra="allow")  # Kubernetes-only fields, checked below

    node_name: NonEmpty | None = None
    containers: list[Container]

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return _check_keys(data, cls, _KUBERNETES_ONLY_POD, _UNSUPPORTED_POD)

    @model_validator(mode="after")
    def _one_container(self) -> PodSpec:
        if len(self.containers) != 1:
            raise invalid(f"{len(self.containers)} containers: edgeloop runs one worker per "
                          "stage, so give exactly one", path="containers")
        return self


class PodTemplate(ManifestPart):
    """A stage's ``template``: Kubernetes' ``PodTemplateSpec``."""

    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: PodSpec

    @property
    def container(self) -> Container:
        return self.spec.containers[0]


@dataclass(frozen=True)
class StageRuntime:
    """What a stage's worker runs with, beyond its worker spec: shown by ``describe``."""

    node: str | None
    image: str | None = None
    resources: dict[str, dict[str, str]] | None = None

    @classmethod
    def of(cls, template: PodTemplate) -> StageRuntime:
        container = template.container
        resources = None
        if container.resources is not None:
            resources = {
                kind: {k: str(v) for k, v in values.items()}
                for kind, values in (("limits", container.resources.limits),
                                     ("requests", container.resources.requests))
                if values
            }
        return cls(node=template.spec.node_name, image=container.image, resources=resources)
