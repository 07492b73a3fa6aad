"""The model registry: verified, content-addressed files served to nodes in chunks."""

from __future__ import annotations

import hashlib

import pytest

from cloud_manager.registry import ModelRegistry, RegistryError
from edge_agent.downloads import ArtifactDownloader
from edgeloop.mqtt import MqttClient, MqttSettings
from protocol.messages import ChunkRequest
from scripted_node import ScriptedNode, succeed
from test_cloud_daemon import DATASET, JOB, NODE, NS, cloud, job_state, setup_job, wait_for


def test_import_verifies_size_and_hash_and_chunks_reassemble(tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    data = bytes(range(256)) * 3000  # 768000 bytes: 3 chunks of 256 KiB
    source = tmp_path / "model.tflite"
    source.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(RegistryError, match="the train result said 5"):
        registry.import_file(source, sha, 5)
    with pytest.raises(RegistryError, match="has sha256"):
        registry.import_file(source, "0" * 64, len(data))
    with pytest.raises(RegistryError, match="not a readable file"):
        registry.import_file(tmp_path / "missing", sha, len(data))
    assert not registry.has("0" * 64)
    registry.import_file(source, sha, len(data))
    assert registry.has(sha)
    chunks = [registry.chunk("edge", ChunkRequest(node="edge", sha256=sha, index=i)) for i in range(3)]
    assert {c.total for c in chunks} == {3} and b"".join(c.data for c in chunks) == data
    beyond = registry.chunk("edge", ChunkRequest(node="edge", sha256=sha, index=3))
    assert beyond.error and "out of range" in beyond.error
    unknown = registry.chunk("edge", ChunkRequest(node="edge", sha256="1" * 64, index=0))
    assert unknown.error and "not in the cloud's model registry" in unknown.error


def test_import_syncs_the_folder_once_the_file_is_in_place(tmp_path, monkeypatch):
    """The store marks a version collected right after the import: the rename that put the
    file there (and the new folder) must be durable by then, not only the bytes."""
    import cloud_manager.registry as registry_module

    data = b"model bytes"
    sha = hashlib.sha256(data).hexdigest()
    source = tmp_path / "m.tflite"
    source.write_bytes(data)
    registry = ModelRegistry(tmp_path / "models")
    synced: list[tuple[str, bool]] = []
    monkeypatch.setattr(registry_module, "fsync_dir",
                        lambda folder: synced.append((str(folder), registry.has(sha))))
    registry.import_file(source, sha, len(data))
    assert synced == [(str(tmp_path / "models"), False),
                      (str(registry.path(sha).parent), True)]


@pytest.mark.broker
@pytest.mark.parametrize("remote", [False, True], ids=["same-host", "pulled-from-node"])
async def test_deployed_version_is_downloadable_by_the_deploy_node(broker, tmp_path, remote):
    """Same host: the cloud copies the train output; another host: it pulls it in chunks."""
    async with cloud(broker.url, tmp_path / "state") as daemon, \
            ScriptedNode(broker.url, NODE, succeed(write_bytes=300_000), hide_paths=remote) as node:
        await setup_job(broker.url, tmp_path)
        await wait_for(lambda: NODE in daemon.manager.online_nodes())
        await node.report_samples(DATASET, "x", 500)
        await wait_for(lambda: job_state(daemon).deployed_version == 1)
        await wait_for(lambda: node.desired and node.desired[-1].models)
        (model,) = node.desired[-1].models
        versions = daemon.manager.store.model_versions(f"{NS}/{JOB}")
        assert versions[0].collected is True
        assert (node.pulls > 0) is remote  # 300 kB: two chunks per file when pulled
        settings = MqttSettings(url=broker.url, client_id="deploy-node", session_expiry=0)
        async with MqttClient(settings) as client:
            downloader = ArtifactDownloader(client, "edge-deploy", tmp_path / "downloads",
                                            chunk_timeout=5)
            await client.wait_connected(10)
            for artifact in model.artifacts:
                path = await downloader.fetch(artifact)
                assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact.sha256
                assert path.stat().st_size == 300_000


@pytest.mark.broker
async def test_files_the_node_cannot_send_fail_the_deploy_not_the_loop(broker, tmp_path):
    base = succeed()

    def script(task):
        steps = base(task)
        if task.role == "train":  # the node reports files it then cannot find
            state, result, message, code = steps[-1]
            result = {"artifacts": [{k: v for k, v in a.items() if k != "_content"}
                                    for a in result["artifacts"]]}
            steps[-1] = (state, result, message, code)
        return steps

    async with cloud(broker.url, tmp_path / "state") as daemon, \
            ScriptedNode(broker.url, NODE, script) as node:
        await setup_job(broker.url, tmp_path)
        await wait_for(lambda: NODE in daemon.manager.online_nodes())
        await node.report_samples(DATASET, "x", 500)
        await wait_for(lambda: job_state(daemon).round == 2)
        state = job_state(daemon)
        assert state.deployed_version is None
        failed = [c.reason for c in state.conditions if (c.stage, c.state) == ("Deploy", "Failed")]
        assert failed and "no such file on this node" in failed[0]
        (version,) = daemon.manager.store.model_versions(f"{NS}/{JOB}")
        assert version.collected is False and "no such file" in (version.collect_error or "")
