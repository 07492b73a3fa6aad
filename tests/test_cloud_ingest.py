"""Sample-report ingest: batches of reports commit in one transaction, coalesce per dataset, keep
one bad report from spoiling the rest, and are acknowledged to the broker only once committed."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from running_cloud import api, cloud
from test_cloud_daemon import DATASET, JOB, NODE, NS, seed_manifests, wait_for

from cloud_manager.manager import Manager, SampleIngest
from cloud_manager.outgoing import Outgoing
from cloud_manager.sample_batch import coalesce
from cloud_manager.store import Store
from edgeloop.mqtt import MqttClient, MqttSettings
from protocol import topics
from protocol.messages import ApiRequest, DatasetSamples, NodeStatus, SampleReport, Task

NOW = 1_700_000_000.0
OTHER = f"{NS}/second-dataset"


def report(seq: int, samples: int, dataset: str = DATASET, *, node: str = NODE, boot: str = "b1",
           error: str | None = None) -> SampleReport:
    return SampleReport(node=node, boot_id=boot, seq=seq, ts=NOW, datasets=[
        DatasetSamples(dataset=dataset, url="/d/data.txt", samples=samples, error=error)])


def dataset_body(name: str, node: str = NODE) -> str:
    return json.dumps({"apiVersion": "sedna.io/v1alpha1", "kind": "Dataset",
                       "metadata": {"name": name, "namespace": NS},
                       "spec": {"url": f"/d/{name}/data.txt", "format": "txt", "nodeName": node}})


def apply(manager: Manager, body: str) -> None:
    response, _ = manager.on_api(ApiRequest(request_id=body[-40:], verb="apply", body=body), NOW)
    assert response.ok, response


@pytest.fixture
def manager(tmp_path: Path, store_at):
    """The seed's job (train threshold 100) on a real store (SQLite, then PostgreSQL), its node
    online, and a second dataset that no job uses."""
    store = store_at.open()
    manager = Manager(store)
    manager.on_api(ApiRequest(request_id="ns", verb="create_namespace", name=NS), NOW)
    for text in seed_manifests(tmp_path):
        apply(manager, text)
    apply(manager, dataset_body("second-dataset"))
    manager.on_status(NodeStatus(node=NODE, state="online", boot_id="b1"), NOW)
    yield manager


def train_tasks(messages: list[Outgoing]) -> list[Task]:
    return [m.message for m in messages
            if isinstance(m.message, Task) and m.message.role == "train"]


# -- coalescing (pure) --


def test_coalesce_keeps_the_newest_count_of_each_dataset_and_node():
    updates = coalesce([
        report(1, 50), report(3, 150), report(2, 120),            # seq order, not arrival order
        report(4, 0, error="unreadable"),                          # an error never hides a count
        report(1, 7, OTHER), report(1, 9, OTHER, boot="b2"),       # a new boot: arrival order
        report(9, 999, node="intruder"),                           # another node: its own slot
    ])
    by_slot = {(u.dataset, u.node): u for u in updates}
    assert by_slot[(DATASET, NODE)].entry.samples == 150
    assert by_slot[(DATASET, NODE)].reports == [f"{NODE}/b1/{s}" for s in (1, 3, 2, 4)]
    assert by_slot[(OTHER, NODE)].entry.samples == 9
    assert by_slot[(DATASET, "intruder")].entry.samples == 999
    assert [u.dataset for u in updates] == [DATASET, OTHER, DATASET]


def test_coalesce_passes_on_an_error_when_there_is_no_count():
    (update,) = coalesce([report(1, 0, error="gone"), report(2, 0, error="still gone")])
    assert update.entry.error == "still gone"


# -- manifest lookups --


def test_a_manifest_is_read_again_only_when_its_revision_changed(manager):
    from protocol.manifests import Dataset

    first = manager.manifest(Dataset, NS, "second-dataset")
    assert first is not None and manager.dataset_node(NS, "second-dataset") == NODE
    assert manager.manifest(Dataset, NS, "second-dataset") is first  # parsed once
    apply(manager, dataset_body("second-dataset", node="edge-2"))
    assert manager.store.resource_revision("Dataset", NS, "second-dataset")[0] == 2
    assert manager.dataset_node(NS, "second-dataset") == "edge-2"
    assert manager.manifest(Dataset, NS, "no-such-dataset") is None


# -- one batch, one transaction --


def test_a_batch_applies_the_newest_count_and_evaluates_the_trigger_once(manager):
    batch = [report(1, 50), report(3, 150), report(2, 120), report(4, 5, OTHER), report(3, 150)]
    ingest = manager.on_sample_reports(batch, NOW)
    assert (ingest.reports, ingest.duplicates, ingest.failed) == (4, 1, 0)
    store = manager.store
    assert store.dataset_samples(NS, "incremental-dataset").samples == 150
    assert store.dataset_samples(NS, "second-dataset").samples == 5
    # one trigger evaluation, on the newest count: one train task for samples 0..150
    (task,) = train_tasks(ingest.messages)
    split = json.loads(task.env["EDGELOOP_SPLIT"])
    assert (split["start"], split["end"]) == (0, 150)
    assert store.load_job(NS, JOB).samples == 150

    again = manager.on_sample_reports(batch, NOW + 1)
    assert (again.reports, again.duplicates, again.messages) == (0, 5, [])


def test_a_count_reported_before_the_manifests_starts_the_job_they_create(tmp_path):
    """Agents report what they hold when they connect, usually before anyone applies the
    manifests, and again only when the index changes: that first count must not be dropped.
    A count from a node the Dataset does not name is kept apart and never used."""
    store = Store(tmp_path / "state")
    manager = Manager(store)
    try:
        manager.on_api(ApiRequest(request_id="ns", verb="create_namespace", name=NS), NOW)
        manager.on_status(NodeStatus(node=NODE, state="online", boot_id="b1"), NOW)
        manager.on_sample_reports([report(1, 150), report(1, 900, OTHER, node="intruder")], NOW)
        out: list[Outgoing] = []
        for text in seed_manifests(tmp_path):
            response, messages = manager.on_api(
                ApiRequest(request_id=text[-40:], verb="apply", body=text), NOW + 1)
            assert response.ok, response
            out += messages
        (task,) = train_tasks(out)
        split = json.loads(task.env["EDGELOOP_SPLIT"])
        assert (split["start"], split["end"]) == (0, 150)
        assert store.load_job(NS, JOB).samples == 150

        apply(manager, dataset_body("second-dataset"))  # names NODE, not the intruder
        job = json.loads(seed_manifests(tmp_path)[-1])
        job["metadata"]["name"] = "second-job"
        job["spec"]["dataset"]["name"] = "second-dataset"
        response, messages = manager.on_api(
            ApiRequest(request_id="second-job", verb="apply", body=json.dumps(job)), NOW + 2)
        assert response.ok, response
        assert train_tasks(messages) == []
        assert store.load_job(NS, "second-job").samples == 0
    finally:
        store.close()


def test_one_failing_report_does_not_spoil_its_batch(manager, caplog):
    # A Dataset row that cannot be used (written by hand, no nodeName): its report fails.
    with manager.store.transaction():
        manager.store.put_resource("Dataset", NS, "broken", {"spec": {"url": "/x"}}, NOW)
    batch = [report(1, 5, OTHER), report(2, 0, f"{NS}/broken"), report(3, 150)]
    ingest = manager.on_sample_reports(batch, NOW)
    assert (ingest.reports, ingest.failed) == (3, 1)
    assert f"{NS}/broken" in caplog.text and f"{NODE}/b1/2" in caplog.text
    store = manager.store
    assert store.dataset_samples(NS, "second-dataset").samples == 5
    assert store.dataset_samples(NS, "broken") is None
    assert store.load_job(NS, JOB).samples == 150
    # the attempt that failed left no message behind: one train task, not two
    assert len(train_tasks(ingest.messages)) == 1
    # the whole batch committed, keys included: a redelivery changes nothing
    assert manager.on_sample_reports(batch, NOW + 1).duplicates == 3


def test_a_store_failure_rolls_the_whole_batch_back(manager):
    """A disk error is not one bad report: nothing of the batch stays, the error goes up (the
    daemon then leaves the batch unacknowledged, see the broker tests below)."""
    def disk_error(*args: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    manager.store.put_dataset_samples_many = disk_error  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):
        manager.on_sample_reports([report(1, 150), report(2, 5, OTHER)], NOW)
    assert not manager.store.processed(f"samples:{NODE}/b1/1")
    assert manager.store.load_job(NS, JOB).samples == 0


# -- over the broker: acknowledged only after the commit --


async def publish_reports(url: str, reports: list[SampleReport], garbage: bool = False) -> None:
    async with MqttClient(MqttSettings(url=url, client_id="edge-sender", session_expiry=0)) as node:
        await node.wait_connected(10)
        for i, one in enumerate(reports):
            if garbage and i == len(reports) // 2:
                await node.publish_bytes(topics.samples(one.node), b"\xc1 not msgpack")
            assert await node.publish(topics.samples(one.node), one)


async def setup(url: str, names: list[str]) -> None:
    assert (await api(url, "create_namespace", name=NS)).ok
    for name in names:
        assert (await api(url, "apply", body=dataset_body(name))).ok


@pytest.mark.broker
@pytest.mark.timeout(60)
async def test_reports_are_acknowledged_only_after_their_batch_committed(broker, tmp_path):
    names = [f"ds-{i}" for i in range(12)]
    reports = [report(i + 1, 10 + i, f"{NS}/{name}") for i, name in enumerate(names)]
    state = tmp_path / "state"
    async with cloud(broker.url, state) as daemon:
        await setup(broker.url, names)
        # Stands for a commit that never comes (the process dies before it): the daemon takes
        # the first reports into a batch whose handler waits for the store; the others wait
        # behind it. The broker has them all (the sender's publishes were acknowledged).
        await daemon._lock.acquire()  # noqa: SLF001
        before = daemon.client.stats.received
        await publish_reports(broker.url, reports, garbage=True)
        await wait_for(lambda: daemon.client.stats.received > before)
    with sqlite3.connect(state / "cloud.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM dataset_samples").fetchone()[0] == 0

    # A new process on the same state: the broker sends the unacknowledged reports again.
    async with cloud(broker.url, state) as daemon:
        store = daemon.manager.store
        # the handler's end, not the rows: a batch's rows show before its commit has returned
        await wait_for(lambda: daemon.sample_stats.reports >= len(reports),
                       "every report handled")
        assert all(store.dataset_samples(NS, n) for n in names)
        assert [store.dataset_samples(NS, n).samples for n in names] == list(range(10, 22))
        assert daemon.sample_stats.reports == len(reports) and daemon.sample_stats.failed == 0
        assert daemon.client.stats.protocol_errors == 1  # the garbage came again, was dropped


@pytest.mark.broker
@pytest.mark.timeout(60)
async def test_a_batch_the_store_cannot_commit_is_sent_again(broker, tmp_path, monkeypatch):
    names = [f"ds-{i}" for i in range(8)]
    reports = [report(i + 1, 20 + i, f"{NS}/{name}") for i, name in enumerate(names)]
    async with cloud(broker.url, tmp_path / "state") as daemon:
        await setup(broker.url, names)
        real = daemon.manager.on_sample_reports
        calls = []

        def disk_fails_once(batch: list[SampleReport], now: float) -> SampleIngest:
            calls.append(len(batch))
            if len(calls) == 1:
                raise sqlite3.OperationalError("disk I/O error")
            return real(batch, now)

        monkeypatch.setattr(daemon.manager, "on_sample_reports", disk_fails_once)
        await publish_reports(broker.url, reports)
        store = daemon.manager.store
        await wait_for(lambda: daemon.sample_stats.reports >= len(reports),
                       "every report handled", timeout=30)
        assert all(store.dataset_samples(NS, n) for n in names)
        assert [store.dataset_samples(NS, n).samples for n in names] == list(range(20, 28))
        assert daemon.client.stats.redeliveries == 1
        assert daemon.sample_stats.deferred == calls[0] >= 1
        assert daemon.sample_stats.reports == len(reports)


# -- several managers: what a member ingests, the leader decides on --


def test_a_member_stores_the_count_and_journals_the_event_the_leader_runs_it_once(manager,
                                                                                 store_at):
    """An ingest member (``decides=False``) on its own connection to the store: the count is
    stored at once, the train trigger waits in the journal until the leader runs it, once."""
    member = Manager(store_at.open(), decides=False)
    ingest = member.on_sample_reports([report(1, 150)], NOW)
    assert (ingest.reports, ingest.messages) == (1, [])  # nothing decided, nothing sent
    assert manager.store.dataset_samples(NS, "incremental-dataset").samples == 150
    assert manager.store.load_job(NS, JOB).task is None
    again = member.on_sample_reports([report(1, 150)], NOW)  # redelivered: a duplicate
    assert (again.reports, again.duplicates) == (0, 1)
    messages, taken = manager.apply_journal(NOW + 1)
    assert taken == 1 and len(train_tasks(messages)) == 1
    assert manager.apply_journal(NOW + 2) == ([], 0)  # run once, then gone


def test_a_journal_row_that_is_not_an_event_is_dropped_alone(manager, store_at):
    member = Manager(store_at.open(), decides=False)
    with member.store.transaction():
        member.store.journal_add(NS, JOB, '{"kind": "nonsense"}', NOW)
    member.on_sample_reports([report(1, 150)], NOW)
    messages, taken = manager.apply_journal(NOW + 1)
    assert taken == 2 and len(train_tasks(messages)) == 1
    assert manager.apply_journal(NOW + 2) == ([], 0)


def test_a_journaled_count_overtaken_by_a_newer_report_is_not_run(manager, store_at):
    """Two reports of one node dealt to two managers: the member's older one reaches the
    leader through the journal after the leader ran its own newer one. The stored count is
    the newer one, and the job does not go back to the older."""
    member = Manager(store_at.open(), decides=False)
    member.on_sample_reports([report(1, 60)], NOW)
    manager.on_sample_reports([report(2, 80)], NOW)  # the leader's own, at once
    assert manager.store.load_job(NS, JOB).samples == 80
    messages, taken = manager.apply_journal(NOW + 1)
    assert (messages, taken) == ([], 1)
    assert manager.store.load_job(NS, JOB).samples == 80
    assert manager.store.dataset_samples(NS, "incremental-dataset").samples == 80
