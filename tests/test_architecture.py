"""The layout keeps the architecture README.md draws: every import arrow points down.

    bench                              measures everything below
    demo                               the whole loop on one machine
    console                            the labelling web console: a client of the cloud's API
    cloud_manager  edge_agent  mosquitto  workers    side by side, none imports another
    edgeloop                           runtime: MQTT layer, reliable send, durable writes, CLI shell
    protocol                           wire contract, manifests, data formats; no network, no I/O loop

Every import counts, also those inside functions and under ``TYPE_CHECKING``: a lazy import is
still a dependency. ``workers`` may use the runtime's small pieces (backoff, durable writes,
checksums) but never the MQTT layer: a worker talks to its agent over the local channel only.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYER = {
    "protocol": 0,
    "edgeloop": 1,
    "cloud_manager": 2,
    "edge_agent": 2,
    "mosquitto": 2,
    "workers": 2,
    "console": 3,
    "demo": 4,
    "bench": 5,
}
PRODUCT = ("protocol", "edgeloop", "cloud_manager", "edge_agent", "mosquitto", "workers")
#: What a worker process must never load: it does not speak MQTT.
MQTT_LIBRARIES = {"aiomqtt", "paho"}
#: The ML stack comes with the ``edge`` / ``train`` / ``demo`` extras, never with the base install.
ML_LIBRARIES = {"tensorflow", "keras", "cv2", "ai_edge_litert", "pycocotools", "matplotlib"}
CONTROL_PLANE = ("protocol", "edgeloop", "cloud_manager", "edge_agent", "mosquitto", "console")
#: protocol does no I/O beyond reading the files it parses.
NO_IO_IN_PROTOCOL = {"socket", "asyncio", "sqlite3", "subprocess", "aiomqtt", "paho", "websockets"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. cloud_manager.api
    target: str  # what it names, e.g. protocol.messages.ApiRequest or numpy
    line: int
    top_level: bool  # executed when the module is imported (not inside a function)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in LAYER
        for path in sorted((ROOT / package).rglob("*.py"))
    }


MODULES = _modules()


def _imports(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    nested = {
        id(node)
        for function in ast.walk(tree)
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(function)
    }
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        top = id(node) not in nested
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno, top)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                yield Import(module, f"{source}.{alias.name}", node.lineno, top)


IMPORTS = [imp for module, path in MODULES.items() for imp in _imports(module, path)]


def _resolve(target: str) -> str | None:
    """The project module an import names (``a.b.C`` -> ``a.b``), or None for a library."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _package(module: str) -> str:
    return module.partition(".")[0]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for imp in IMPORTS:
        target = _resolve(imp.target)
        if target is not None and target != imp.module:
            graph[imp.module].add(target)
    return graph


def test_every_package_is_checked() -> None:
    """A new top-level package must be given its place in the layers."""
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages <= set(LAYER), f"not placed in a layer: {sorted(packages - set(LAYER))}"
    assert {"protocol", "edgeloop", "workers", "demo"} <= {_package(m) for m in MODULES}


def _arrows_up_or_sideways(imports: list[Import]) -> list[str]:
    wrong = []
    for imp in imports:
        target = _resolve(imp.target)
        if target is None:
            continue
        source_pkg, target_pkg = _package(imp.module), _package(target)
        if source_pkg != target_pkg and LAYER[target_pkg] >= LAYER[source_pkg]:
            wrong.append(f"{imp.module}:{imp.line}: {imp.module} -> {target}")
    return wrong


def test_arrows_point_down() -> None:
    wrong = _arrows_up_or_sideways(IMPORTS)
    assert not wrong, "imports that run up or sideways:\n" + "\n".join(wrong)


def test_the_check_sees_arrows_up_and_sideways() -> None:
    planted = [
        Import("protocol.codec", "cloud_manager.store.Store", 1, True),
        Import("edgeloop.mqtt", "demo.run", 2, False),
        Import("cloud_manager.commands", "workers.export.export_tflite", 3, False),
        Import("cloud_manager.api", "protocol.messages.ApiRequest", 4, True),
    ]
    assert [w.partition(":")[0] for w in _arrows_up_or_sideways(planted)] == [
        "protocol.codec", "edgeloop.mqtt", "cloud_manager.commands"]


def test_no_cycle_between_modules() -> None:
    graph = _graph()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, f"modules that import each other: {cycles}"


def _reachable(start: str) -> set[str]:
    graph, seen, todo = _graph(), set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return seen


def test_workers_never_reach_the_mqtt_layer() -> None:
    wrong = []
    for module in (m for m in MODULES if _package(m) == "workers"):
        for reached in _reachable(module):
            for imp in IMPORTS:
                if imp.module == reached and imp.target.partition(".")[0] in MQTT_LIBRARIES:
                    wrong.append(f"{module} reaches {imp.target} through {reached}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_the_control_plane_loads_no_ml_library_on_import() -> None:
    """``pip install edgeloop`` (no extra) must be able to import all of it."""
    wrong = [
        f"{MODULES[imp.module].relative_to(ROOT)}:{imp.line}: {imp.target}"
        for imp in IMPORTS
        if _package(imp.module) in CONTROL_PLANE
        and imp.top_level
        and imp.target.partition(".")[0] in ML_LIBRARIES
    ]
    assert not wrong, "\n".join(wrong)


def test_protocol_does_no_network_or_process_io() -> None:
    wrong = [
        f"{MODULES[imp.module].relative_to(ROOT)}:{imp.line}: {imp.target}"
        for imp in IMPORTS
        if _package(imp.module) == "protocol" and imp.target.partition(".")[0] in NO_IO_IN_PROTOCOL
    ]
    assert not wrong, "\n".join(wrong)
