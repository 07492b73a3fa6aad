"""Commands of the cloud manager: ``edgeloop cloud`` (the daemon) and the API clients
``apply``, ``create namespace``, ``get``, ``describe``, ``delete``, ``pause``, ``resume``,
``rollback``, ``hardex list|export`` and ``label import``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import typer

from edgeloop.connection import ConnectionOptions, with_connection
from edgeloop.fairness import Budget
from protocol.commands import FILES_HELP, PATHS_HELP, manifest_sources

#: Exit code when the broker or the cloud manager cannot be reached.
EXIT_UNREACHABLE = 3

RESOURCE_HELP = "jobs (il), datasets, models, nodes, namespaces or versions."
Namespace = typer.Option("default", "-n", "--namespace", help="Namespace.")
Timeout = typer.Option(5.0, "--timeout", help="Seconds to wait for an answer.")


def _request(options: ConnectionOptions, verb: str, timeout: float, **fields: Any) -> Any:
    """One API call; prints the error and exits unless the answer is ok."""
    from cloud_manager.api_client import call, new_request
    from edgeloop.mqtt import NotConnected, RequestTimeout

    try:
        (response,) = asyncio.run(call(options, verb, new_request(**fields), timeout=timeout))
    except (NotConnected, RequestTimeout) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_UNREACHABLE) from None
    if not response.ok:
        typer.echo(f"error: {response.message}", err=True)
        for line in response.errors:
            typer.echo(f"  {line}", err=True)
        raise typer.Exit(1)
    return response


def _session(work: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run an exchange of several API calls; prints the error and exits on a refusal (1) or
    when the broker or the cloud manager cannot be reached (3)."""
    from cloud_manager.api_client import ApiFailed
    from edgeloop.mqtt import NotConnected, RequestTimeout

    try:
        return asyncio.run(work())
    except (NotConnected, RequestTimeout) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except ApiFailed as exc:
        typer.echo(f"error: {exc.response.message}", err=True)
        for line in exc.response.errors:
            typer.echo(f"  {line}", err=True)
        raise typer.Exit(1) from None


def _check_output(output: str) -> str:
    from cloud_manager.render import OUTPUT_FORMATS

    if output not in OUTPUT_FORMATS:
        raise typer.BadParameter(f"{output!r}: use one of {', '.join(OUTPUT_FORMATS)}")
    return output


def register(app: typer.Typer) -> None:
    create = typer.Typer(help="Create a resource that has no manifest (a namespace).",
                         no_args_is_help=True)
    app.add_typer(create, name="create")
    hardex = typer.Typer(help="A job's hard examples: list them, export them for labelling.",
                         no_args_is_help=True)
    app.add_typer(hardex, name="hardex")
    label = typer.Typer(help="Labelled samples for a job's dataset.", no_args_is_help=True)
    app.add_typer(label, name="label")
    _register_labelling(hardex, label)

    @app.command("cloud")
    @with_connection
    def cloud(
        state: Path = typer.Option(Path("edgeloop-state"), "--state", envvar="EDGELOOP_STATE",
                                   help="Directory of the cloud manager's files: its SQLite "
                                        "store (unless --store), hard-example inbox, registry."),
        store_url: str = typer.Option(None, "--store", envvar="EDGELOOP_STORE",
                                      help="Keep the state in PostgreSQL instead of SQLite: "
                                           "postgresql://user:password@host:port/database."),
        tz: str = typer.Option("UTC", "--timezone", envvar="EDGELOOP_TIMEZONE",
                               help="IANA timezone in which train trigger timer windows are read."),
        client_id: str = typer.Option("edgeloop-cloud", "--client-id",
                                      help="MQTT client id (its session keeps messages while down)."),
        always_pull: bool = typer.Option(False, "--always-pull", envvar="EDGELOOP_ALWAYS_PULL",
                                         help="Pull trained models from their node even when "
                                              "their paths are readable here."),
        node_budget_messages: int = typer.Option(
            Budget.messages, "--node-budget-messages", envvar="EDGELOOP_NODE_BUDGET_MESSAGES",
            min=1, help="Messages per second one node may send; more are turned away."),
        node_budget_mb: float = typer.Option(
            Budget.bytes / 2**20, "--node-budget-mb", envvar="EDGELOOP_NODE_BUDGET_MB",
            min=0.001, help="MiB per second one node may send; more are turned away."),
        hardex_job_mb: int = typer.Option(4096, "--hardex-job-mb", min=1,
                                          help="Most MB of hard-example images kept per job."),
        hardex_job_count: int = typer.Option(20000, "--hardex-job-count", min=1,
                                             help="Most hard examples kept per job."),
        hardex_node_mb: int = typer.Option(8192, "--hardex-node-mb", min=1,
                                           help="Most MB of hard-example images kept per node."),
        hardex_node_count: int = typer.Option(40000, "--hardex-node-count", min=1,
                                              help="Most hard examples kept per node."),
        leader_lease: bool = typer.Option(
            False, "--leader-lease", envvar="EDGELOOP_LEADER_LEASE",
            help="Several managers share the --store database: all of them ingest a share of "
                 "the node reports and answer the API's reads; the one holding its lease takes "
                 "the decisions, the others take over when it stops renewing."),
        connection: ConnectionOptions = None,  # type: ignore[assignment]
    ) -> None:
        """Run the cloud manager: job state machine, triggers, API, node registry.

        Hard examples beyond a quota are refused for now: the node keeps them and sends them
        again later."""
        import signal
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        from cloud_manager.daemon import CloudDaemon
        from cloud_manager.hardex_admission import MB, HardexQuotas
        from cloud_manager.hardex_inbox import INBOX_DIR, HardExampleInbox
        from cloud_manager.manager import Manager
        from cloud_manager.registry import REGISTRY_DIR, ModelRegistry
        from cloud_manager.ingest_split import IngestSplit
        from cloud_manager.replicas import serve_replica
        from cloud_manager.store import Store, StoreError

        try:
            zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise typer.BadParameter(f"{tz!r} is not a known IANA timezone (e.g. UTC, "
                                     "Asia/Shanghai)", param_hint="--timezone") from None
        if leader_lease and not store_url:
            raise typer.BadParameter("managers share a lease in a PostgreSQL store: give "
                                     "--store postgresql://...", param_hint="--leader-lease")
        try:
            store = Store(url=store_url) if store_url else Store(state)
            lease_store = Store(url=store_url) if leader_lease and store_url else None
        except StoreError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        budget = Budget(messages=node_budget_messages, bytes=int(node_budget_mb * 2**20))
        quotas = HardexQuotas(job_bytes=hardex_job_mb * MB, job_count=hardex_job_count,
                              node_bytes=hardex_node_mb * MB, node_count=hardex_node_count)

        def daemon_of(manager_store: Store, split: IngestSplit | None = None,
                      member_id: str | None = None,
                      lock: asyncio.Lock | None = None) -> CloudDaemon:
            manager = Manager(manager_store, tz=zone, inbox=HardExampleInbox(state / INBOX_DIR),
                              registry=ModelRegistry(state / REGISTRY_DIR),
                              read_node_paths=not always_pull,
                              decides=split is None or not split.member)
            return CloudDaemon(connection.settings(member_id or client_id), manager,
                               budget=budget, hardex_quotas=quotas, split=split, lock=lock)

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            if lease_store is None:
                await daemon_of(store).run(stop)
            else:
                await serve_replica(store_url, store, lease_store, client_id, daemon_of, stop)

        typer.echo(f"cloud manager: state {store.location}, broker {connection.broker}, timers in {tz}", err=True)
        try:
            asyncio.run(main())
        finally:
            store.close()
            if lease_store is not None:
                lease_store.close()

    @app.command("apply")
    @with_connection
    def apply(
        paths: list[str] = typer.Argument(None, help=PATHS_HELP),
        files: list[str] = typer.Option([], "-f", "--filename", help=FILES_HELP),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Validate only; send nothing to the cloud manager."
        ),
        timeout: float = Timeout,
        connection: ConnectionOptions = None,  # type: ignore[assignment]
    ) -> None:
        """Create or update resources from manifests, as ``kubectl apply -f`` does.

        Every manifest is validated first; nothing is sent unless all are valid. Datasets and
        models are sent before the jobs that reference them.
        """
        from cloud_manager.api import APPLY_ORDER
        from cloud_manager.api_client import call, new_request
        from edgeloop.mqtt import NotConnected, RequestTimeout
        from protocol.manifest_yaml import manifests_or_raise, read_files
        from protocol.manifests import ManifestError

        try:
            manifests = manifests_or_raise(read_files(manifest_sources(files, paths)))
        except ManifestError as exc:
            for line in exc.errors:
                typer.echo(line, err=True)
            raise typer.Exit(1) from None
        manifests.sort(key=lambda m: APPLY_ORDER[m.kind])
        if dry_run:
            for manifest in manifests:
                typer.echo(f"{'/'.join(manifest.key)} valid (dry run: not applied)")
            return
        requests = [
            new_request(
                resource=manifest.kind,
                namespace=manifest.key[1],
                name=manifest.key[2],
                body=json.dumps(manifest.model_dump(mode="json", by_alias=True, exclude_unset=True)),
            )
            for manifest in manifests
        ]
        try:
            responses = asyncio.run(call(connection, "apply", requests, timeout=timeout))
        except (NotConnected, RequestTimeout) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_UNREACHABLE) from None
        failed = False
        for manifest, response in zip(manifests, responses, strict=True):
            name = "/".join(manifest.key)
            if response.ok:
                typer.echo(f"{name} {response.message or 'applied'}")
            else:
                failed = True
                typer.echo(f"{name}: {response.message}", err=True)
                for line in response.errors:
                    typer.echo(f"  {line}", err=True)
        if failed:
            raise typer.Exit(1)

    @create.command("namespace")
    @with_connection
    def create_namespace(
        name: str = typer.Argument(..., help="Namespace to create."),
        timeout: float = Timeout,
        connection: ConnectionOptions = None,  # type: ignore[assignment]
    ) -> None:
        """Create a namespace (``kubectl create ns``)."""
        response = _request(connection, "create_namespace", timeout, name=name, namespace=name)
        typer.echo(f"namespace/{name} {response.message}")

    @app.command("get")
    @with_connection
    def get(
        resource: str = typer.Argument(..., help=RESOURCE_HELP),
        name: str = typer.Argument("", help="Only this one."),
        namespace: str = Namespace,
        all_namespaces: bool = typer.Option(False, "-A", "--all-namespaces",
                                            help="Every namespace."),
        output: str = typer.Option("table", "-o", "--output", help="table, wide, yaml or json."),
        timeout: float = Timeout,
        connection: ConnectionOptions = None,  # type: ignore[assignment]
    ) -> None:
        """List resources, with their status."""
        from rich.console import Console

        from cloud_manager.render import dump, table

        _check_output(output)
        response = _request(connection, "get", timeout, resource=resource, name=name,
                            namespace=namespace, args={"all_namespaces": all_namespaces})
        data = response.data
        if output in ("yaml", "json"):
            typer.echo(dump(data["items"], output))
        elif not data["items"]:
            typer.echo(f"No {resource} found in namespace {namespace}." if not all_namespaces
                       else f"No {resource} found.", err=True)
        else:
            Console(width=200).print(table(data["kind"], data["items"], wide=output == "wide"))

    @app.command("describe")
    @with_connection
    def describe(
        resource: str = typer.Argument(..., help=RESOURCE_HELP),
        name: str = typer.Argument(..., help="Resource name."),
        namespace: str = Namespace,
        output: str = typer.Option("table", "-o", "--output", help="table, yaml or json."),
        timeout: float = Timeout,
        connection: ConnectionOptions = None,  # type: ignore[assignment]
    ) -> None:
        """Show one resource in detail; for a job, its whole condition history."""
        from rich.console import Console

        from cloud_manager.render import describe_job, dump

        _check_output(output)
        response = _request(connection, "describe", timeout, resource=resource, name=name,
                            namespace=namespace)
        data = response.data
        if output in ("yaml", "json") or data["kind"] != "IncrementalLearningJob":
            typer.echo(dump(data, "json" if output == "json" else "yaml"))
        else:
            Console(width=200).print(describe_job(data))

    @app.command("delete")
    @with_connection
    def delete(
        resource: str = typer.Argument(..., help="jobs (il), datasets or models."),
        name: str = typer.Argument(..., help="Resource name."),
        namespace: str = Namespace,
        timeout: float = Timeout,
        connection: ConnectionOptions = None,  # type: ignore[assignment]
    ) -> None:
        """Delete a resource. A job's running task is stopped; its model versions are kept."""
        response = _request(connection, "delete", timeout, resource=resource, name=name,
                            namespace=namespace)
        typer.echo(f"{response.data['kind']}/{namespace}/{name} deleted")

    def _pause_or_resume(verb: str) -> None:
        @app.command(verb)
        @with_connection
        def command(
            name: str = typer.Argument(..., help="Job name."),
            namespace: str = Namespace,
            timeout: float = Timeout,
            connection: ConnectionOptions = None,  # type: ignore[assignment]
        ) -> None:
            _request(connection, verb, timeout, resource="jobs", name=name, namespace=namespace)
            typer.echo(f"IncrementalLearningJob/{namespace}/{name} {verb}d")

        command.__doc__ = (
            "Pause a job: no new task starts (a running one finishes) until it is resumed."
            if verb == "pause" else "Resume a paused (or failed) job."
        )

    _pause_or_resume("pause")
    _pause_or_resume("resume")

    @app.command("rollback")
    @with_connection
    def rollback(
        name: str = typer.Argument(..., help="Job name."),
        to: int = typer.Option(None, "--to", help="Version to serve (default: the previous one)."),
        now: bool = typer.Option(False, "--now", help="Every node at once, not through the "
                                 "job's staged rollout."),
        namespace: str = Namespace,
        timeout: float = Timeout,
        connection: ConnectionOptions = None,  # type: ignore[assignment]
    ) -> None:
        """Serve an earlier model version of a job on its deploy nodes (every version is kept).
        A job with deploySpec.rollout goes through it, canaries first, unless --now."""
        args: dict[str, object] = {"now": True} if now else {}
        if to is not None:
            args["version"] = to
        response = _request(connection, "rollback", timeout, resource="jobs", name=name,
                            namespace=namespace, args=args)
        typer.echo(f"IncrementalLearningJob/{namespace}/{name} {response.message}")

    @app.command("rollout")
    @with_connection
    def rollout(
        command: str = typer.Argument(..., help="status, pause, resume or abort."),
        name: str = typer.Argument(..., help="Job name."),
        namespace: str = Namespace,
        output: str = typer.Option("table", "-o", "--output", help="table or json."),
        timeout: float = Timeout,
        connection: ConnectionOptions = None,  # type: ignore[assignment]
    ) -> None:
        """A job's staged rollout: its stage and each node's part (status), or hold it
        (pause), let it go on (resume), or stop it and send its nodes back to the previous
        version (abort)."""
        if command not in ("status", "pause", "resume", "abort"):
            raise typer.BadParameter(f"{command!r}: use status, pause, resume or abort",
                                     param_hint="COMMAND")
        response = _request(connection, "rollout", timeout, resource="jobs", name=name,
                            namespace=namespace, args={"command": command})
        if output == "json":
            typer.echo(json.dumps(response.data, indent=2, sort_keys=True))
            return
        typer.echo(f"IncrementalLearningJob/{namespace}/{name} rollout {response.message}")
        data = response.data if isinstance(response.data, dict) else {}
        targets = data.get("targets")
        if command == "status" and isinstance(targets, list) and targets:
            from rich.console import Console

            from cloud_manager.render import targets_table

            Console().print(targets_table(targets, None))


def _register_labelling(hardex: typer.Typer, label: typer.Typer) -> None:
    @hardex.command("list")
    @with_connection
    def hardex_list(
        job: str = typer.Argument(..., help="Job name."),
        namespace: str = Namespace,
        output: str = typer.Option("table", "-o", "--output", help="table, wide or json."),
        timeout: float = Timeout,
        connection: ConnectionOptions = None,  # type: ignore[assignment]
    ) -> None:
        """The job's hard examples: id, node, age, model version, boxes, labelled or not."""
        from rich.console import Console

        from cloud_manager.api_client import ApiSession, HardexList, list_hardex
        from cloud_manager.render import dump, table

        if output not in ("table", "wide", "json"):
            raise typer.BadParameter(f"{output!r}: use one of table, wide, json")

        async def work() -> HardexList:
            async with ApiSession(connection, timeout) as api:
                return await list_hardex(api, namespace, job)

        try:
            items = _session(work).items
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        if output == "json":
            typer.echo(dump(items, "json"))
        elif not items:
            typer.echo(f"No hard examples for job {namespace}/{job}.", err=True)
        else:
            Console(width=200).print(table("HardExample", items, wide=output == "wide"))

    @hardex.command("export")
    @with_connection
    def hardex_export(
        job: str = typer.Argument(..., help="Job name."),
        out: Path = typer.Option(..., "--out", help="Folder to write images/ and the "
                                                    "pre-annotations into."),
        namespace: str = Namespace,
        fmt: str = typer.Option("index", "--format",
                               help="index (the seed's data.txt), coco, or label-studio (tasks "
                                    "with the model's boxes as predictions)."),
        include_all: bool = typer.Option(False, "--all/--unlabelled",
                                         help="Every hard example, or only those not labelled "
                                              "yet (the default)."),
        timeout: float = typer.Option(30.0, "--timeout", help="Seconds to wait for each answer."),
        connection: ConnectionOptions = None,  # type: ignore[assignment]
    ) -> None:
        """Write the job's hard examples and the model's boxes, as proposals to correct, for an
        annotation tool. `edgeloop label import` takes the corrected files back."""
        from cloud_manager.api_client import ApiSession, HardexList, fetch_hardex_images, list_hardex
        from cloud_manager.hardex_export import EXPORT_FORMATS, image_path, write_export
        from edgeloop.durable import write_atomically
        from protocol.classes import CLASS_NAMES

        if fmt not in EXPORT_FORMATS:
            raise typer.BadParameter(f"{fmt!r}: use one of {', '.join(EXPORT_FORMATS)}",
                                     param_hint="--format")
        (out / "images").mkdir(parents=True, exist_ok=True)

        def keep(item: dict[str, Any], image: bytes) -> None:
            write_atomically(image_path(out, item), image)

        async def work() -> tuple[HardexList, list[dict[str, Any]], list[str]]:
            async with ApiSession(connection, timeout) as api:
                listing = await list_hardex(api, namespace, job)
                items = [i for i in listing.items if include_all or not i["labelled"]]
                missing = await fetch_hardex_images(api, namespace, job, items, keep)
                return listing, items, missing

        try:
            listing, items, missing = _session(work)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        for sha256 in missing:
            typer.echo(f"{sha256[:12]}: gone from the cloud's inbox meanwhile; not exported",
                       err=True)
        class_names = listing.class_names or list(CLASS_NAMES)
        result = write_export(out, [i for i in items if i["id"] not in missing], fmt, class_names)
        for line in result.dropped:
            typer.echo(f"left out: {line}", err=True)
        skipped = len(listing.items) - len(items)
        typer.echo(f"{result.images} hard examples, {result.boxes} proposed boxes -> {result.path}"
                   + (f" ({skipped} already labelled not exported; --all includes them)"
                      if skipped else ""))
        if result.sources:
            typer.echo("from " + ", ".join(f"{where or '?'}: {count}" for where, count
                                           in sorted(result.sources.items())))

    @label.command("import")
    @with_connection
    def label_import(
        job: str = typer.Argument(..., help="Job name: its Dataset receives the samples."),
        file: Path = typer.Argument(..., help="data.txt (index), a YOLO folder, a COCO JSON or a "
                                              "Label Studio JSON export."),
        namespace: str = Namespace,
        fmt: str = typer.Option("index", "--format", help="index, yolo, coco or label-studio."),
        timeout: float = typer.Option(60.0, "--timeout",
                                      help="Seconds to wait for the dataset's node to confirm "
                                           "each batch."),
        connection: ConnectionOptions = None,  # type: ignore[assignment]
    ) -> None:
        """Add labelled samples to the job's dataset: the node holding its index copies the
        images beside it and appends the lines. Importing the same file again adds nothing."""
        from cloud_manager.api_client import ApiSession, LabelImport, LabelTarget
        from cloud_manager.label_files import LABEL_FORMATS, batches, read_labels

        if fmt not in LABEL_FORMATS:
            raise typer.BadParameter(f"{fmt!r}: use one of {', '.join(LABEL_FORMATS)}",
                                     param_hint="--format")
        wait_s = max(1.0, timeout - 5.0)

        async def work() -> tuple[LabelTarget, list[str], list[dict[str, str]]]:
            async with ApiSession(connection, timeout) as api:
                target = LabelTarget.of(await api.ask("label_import", namespace=namespace, name=job))
                read = await asyncio.to_thread(read_labels, file, fmt, target.class_names)
                problems = list(read.problems)
                results: list[dict[str, str]] = []
                for batch in batches(read.samples, problems):
                    response = await api.ask(
                        "label_import", timeout=timeout + 5.0, namespace=namespace, name=job,
                        args={"samples": batch.samples, "wait_s": wait_s},
                        attachments=batch.images)
                    results += LabelImport.of(response).results
                return target, problems, results

        try:
            target, problems, results = _session(work)
        except (OSError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        for line in problems:
            typer.echo(f"skipped {line}", err=True)
        for result in results:
            if result["status"] in ("rejected", "pending"):
                word = "rejected" if result["status"] == "rejected" else "not confirmed"
                typer.echo(f"{word} {result['source']}: {result['reason']}", err=True)
        count = {s: sum(1 for r in results if r["status"] == s)
                 for s in ("added", "present", "rejected", "pending")}
        typer.echo(f"{target.dataset} on node {target.node}: {count['added']} added, "
                   f"{count['present']} already there, {len(problems)} skipped (bad line or "
                   f"image), {count['rejected']} rejected by the node"
                   + (f", {count['pending']} not confirmed yet (import again to check)"
                      if count["pending"] else ""))
        if problems or count["rejected"] or count["pending"]:
            raise typer.Exit(1)
