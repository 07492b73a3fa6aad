"""Node status ingest: statuses that arrived together commit in one transaction, each node's
newest stored once, every change of state still reaching the jobs, and a batch the store cannot
commit is sent again by the broker."""

from __future__ import annotations

import json
import sqlite3

import pytest
from running_cloud import cloud
from test_cloud_daemon import JOB, NODE, NS, wait_for
from test_cloud_ingest import manager, report, train_tasks  # noqa: F401  (fixture)

from cloud_manager.manager import Manager, StatusIngest
from cloud_manager.status_batch import Known, by_node, settle
from cloud_manager.store import Store
from edgeloop.mqtt import MqttClient, MqttSettings
from protocol import topics
from protocol.messages import ApiRequest, ApiResponse, NodeStatus

NOW = 1_700_000_000.0


def status(node: str, seq: int, state: str = "online", boot: str = "b1") -> NodeStatus:
    return NodeStatus(node=node, state=state, boot_id=boot, seq=seq)  # type: ignore[arg-type]


# -- settling (pure) --


def test_by_node_keeps_arrival_order_within_each_node():
    groups = by_node([status("a", 1), status("b", 1), status("a", 2)])
    assert list(groups) == ["a", "b"]
    assert [s.seq for s in groups["a"]] == [1, 2]


def test_settle_keeps_the_newest_and_every_change_of_state():
    settled = settle(Known("b1", 1, "online"), [
        status("a", 2), status("a", 3, "offline"), status("a", 2),   # a late seq 2: skipped
        status("a", 0, boot="b2"),                                   # a new boot: newer
    ])
    assert settled is not None
    assert (settled.latest.boot_id, settled.latest.seq) == ("b2", 0)
    assert settled.changes == ["offline", "online"]
    assert settled.superseded == 3


def test_settle_of_a_node_the_store_does_not_know_enters_its_first_state():
    settled = settle(None, [status("a", 1), status("a", 2)])
    assert settled is not None and settled.changes == ["online"] and settled.latest.seq == 2


def test_the_last_will_is_applied_although_its_seq_is_older_and_keeps_the_seq_reached():
    settled = settle(Known("b1", 5, "online"), [status("a", 0, "lost"), status("a", 4)])
    assert settled is not None and settled.changes == ["lost"]
    assert (settled.latest.state, settled.latest.seq) == ("lost", 5)  # seq 4 came late: skipped


def test_settle_of_only_older_statuses_is_nothing():
    assert settle(Known("b1", 5, "online"), [status("a", 3), status("a", 4)]) is None


# -- one batch, one transaction --


def test_a_batch_stores_each_nodes_latest_status(manager: Manager):
    batch = [status("n1", 1), status("n2", 1), status("n1", 3), status("n3", 1, "offline"),
             status("n1", 2), status("n2", 2), status("n3", 2)]
    ingest = manager.on_statuses(batch, NOW)
    assert (ingest.nodes, ingest.superseded, ingest.failed) == (3, 4, 0)
    store = manager.store
    assert {n: (store.node(n).status.seq, store.node(n).state) for n in ("n1", "n2", "n3")} == {
        "n1": (3, "online"), "n2": (2, "online"), "n3": (2, "online")}
    # sent again (a redelivery): the same latest statuses, no change of state for the jobs
    again = manager.on_statuses(batch, NOW + 1)
    assert (again.nodes, again.superseded, again.messages) == (3, 4, [])
    assert store.node("n1").status.seq == 3


def test_get_nodes_answers_what_validating_its_data_would_give(manager: Manager):
    manager.on_statuses([status("n1", 1), status("n2", 1, "offline")], NOW)
    response, _ = manager.on_api(ApiRequest(request_id="r1", verb="get", resource="nodes"), NOW)
    assert response.ok
    rows = {row["name"]: row for row in response.data["items"]}  # type: ignore[index,union-attr]
    assert (rows["n1"]["state"], rows["n2"]["state"]) == ("online", "offline")
    assert ApiResponse.model_validate(response.model_dump()) == response


def test_a_node_that_went_away_and_came_back_within_a_batch_fails_its_task(manager: Manager):
    """Only the newest status is stored, but the job still hears of the offline in between:
    the task the node ran is gone, so its attempt fails and is retried."""
    (task,) = train_tasks(manager.on_sample_reports([report(1, 150)], NOW).messages)
    assert manager.store.load_job(NS, JOB).task.state in ("Starting", "Running")
    manager.on_statuses([status(NODE, 1, "offline"), status(NODE, 0, boot="b2")], NOW + 1)
    job = manager.store.load_job(NS, JOB)
    assert job.task is not None and job.task.state == "Failed" and job.retry_at is not None
    assert manager.store.node(NODE).boot_id == "b2"


def test_one_failing_node_does_not_spoil_its_batch(manager: Manager, caplog):
    real = manager.store.put_node

    def broken_for_n2(one: NodeStatus, now: float) -> None:
        if one.node == "n2":
            raise ValueError("unusable status")
        real(one, now)

    manager.store.put_node = broken_for_n2  # type: ignore[method-assign]
    ingest = manager.on_statuses([status("n1", 1), status("n2", 1), status("n2", 2),
                                  status("n3", 1)], NOW)
    assert (ingest.nodes, ingest.failed) == (2, 2)
    assert "status of node n2" in caplog.text
    assert manager.store.node("n2") is None
    assert manager.store.node("n1") is not None and manager.store.node("n3") is not None


def test_a_store_failure_rolls_the_whole_batch_back(manager: Manager):
    def disk_error(*args: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    manager.store.put_node = disk_error  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):
        manager.on_statuses([status("n1", 1), status("n2", 1)], NOW)
    assert manager.store.node("n1") is None


# -- over the broker: acknowledged only after the commit --


@pytest.mark.broker
@pytest.mark.timeout(60)
async def test_a_status_batch_the_store_cannot_commit_is_sent_again(broker, tmp_path, monkeypatch):
    nodes = [f"edge-{i}" for i in range(6)]
    sent = [status(n, seq) for seq in (1, 2, 3) for n in nodes]  # three of each node, interleaved
    async with cloud(broker.url, tmp_path / "state") as daemon:
        real = daemon.manager.on_statuses
        calls: list[int] = []

        def disk_fails_once(batch: list[NodeStatus], now: float) -> StatusIngest:
            calls.append(len(batch))
            if len(calls) == 1:
                raise sqlite3.OperationalError("disk I/O error")
            return real(batch, now)

        monkeypatch.setattr(daemon.manager, "on_statuses", disk_fails_once)
        settings = MqttSettings(url=broker.url, client_id="edge-sender", session_expiry=0)
        async with MqttClient(settings) as sender:
            await sender.wait_connected(10)
            for one in sent:
                assert await sender.publish(topics.status(one.node), one)
        store = daemon.manager.store
        await wait_for(lambda: daemon.status_stats.statuses == sum(calls[1:])
                       and all((row := store.node(n)) and row.status.seq == 3 for n in nodes),
                       "every node's latest status stored, its batch handled")
        assert daemon.client.stats.redeliveries == 1
        assert daemon.status_stats.deferred == calls[0] >= 1
        assert daemon.status_stats.statuses == sum(calls[1:]) >= len(sent)
        assert daemon.status_stats.failed == 0


def test_node_positions_read_boot_seq_and_state_in_one_query(tmp_path):
    store = Store(tmp_path / "state")
    try:
        with store.transaction():
            store.put_node(status("n1", 7, "offline"), NOW)
            # a row whose status has no seq (written before statuses carried one): seq 0
            store.db.execute("INSERT INTO nodes VALUES (?, ?, ?, ?, ?)",
                             ("n2", "online", "b9", json.dumps({"node": "n2"}), NOW))
        assert store.node_positions(["n1", "n2", "unknown"]) == {
            "n1": ("b1", 7, "offline"), "n2": ("b9", 0, "online")}
    finally:
        store.close()
