"""Model files reach a fleet through the broker's fan-out: the decision (pure), and a real broker,
cloud manager and three real agents, one of which joins late and pulls the file chunk by chunk."""

from __future__ import annotations


import pytest
from agent_cloud import agent_config
from running_cloud import api, cloud
from test_cloud_daemon import DATASET, NS, wait_for
from test_cloud_targets import INFERENCE_TASK, job_state, north_fleet
from test_loop_integration import append_samples

from cloud_manager.distribution import FanoutPolicy, _FileState, should_fan_out
from edge_agent.daemon import Agent
from edge_agent.downloads import chunk_count

POLICY = FanoutPolicy(gather_s=1.0, rebroadcast_s=30.0)


def test_a_file_is_fanned_out_once_per_rebroadcast_period() -> None:
    state = _FileState()
    assert should_fan_out(state, 100.0, POLICY)
    state.pending = True
    assert not should_fan_out(state, 100.5, POLICY)  # the wants of the same deploy
    state.pending, state.started_at = False, 102.0
    assert not should_fan_out(state, 120.0, POLICY)  # a late node pulls instead
    assert should_fan_out(state, 132.0, POLICY)


@pytest.mark.broker
@pytest.mark.timeout(180)
async def test_deploy_fans_each_chunk_out_once_and_a_late_node_pulls_it(broker, tmp_path):
    manifests = north_fleet(tmp_path)
    data = tmp_path / "data"

    def agent(node: str, **extra) -> Agent:
        return Agent(agent_config(broker.url, tmp_path / node, node=node, check_models=False,
                                  **extra))

    async with cloud(broker.url, tmp_path / "cloud", read_node_paths=False,
                     fanout=POLICY) as daemon, \
            agent("cloud0", datasets={DATASET: str(data / "data.txt")}), \
            agent("edge1", labels={"site": "north"}) as edge1, \
            agent("edge2", labels={"site": "north"}) as edge2:
        distribution = daemon.distribution
        assert distribution is not None
        assert (await api(broker.url, "create_namespace", name=NS)).code == 201
        for text in manifests:
            assert (await api(broker.url, "apply", body=text)).ok
        await wait_for(lambda: set(job_state(daemon).nodes) == {"edge1", "edge2"},
                       "the job targets the two northern nodes")
        append_samples(data, 0, 10)
        await wait_for(lambda: edge1.serving == {INFERENCE_TASK: 1}
                       and edge2.serving == {INFERENCE_TASK: 1}, "both nodes serve version 1")

        stats = distribution.stats
        assert stats.fanouts >= 1 and stats.fanout_chunks_of
        for sha, chunks in stats.fanout_chunks_of.items():
            size = distribution.registry.path(sha).stat().st_size
            assert chunks == chunk_count(size), sha  # every chunk published once, for both
        assert stats.pulled_chunks == 0
        assert stats.published_bytes == stats.fanout_bytes
        for node in (edge1, edge2):
            got = node.downloader.stats
            assert got.fanout_received == stats.fanout_chunks and got.requested == 0, node.node
            assert got.fanout_rejected == 0
        fanned_out = stats.fanout_chunks

        async with agent("edge3", labels={"site": "north"}) as edge3:
            await wait_for(lambda: edge3.serving == {INFERENCE_TASK: 1},
                           "edge3 serves the serving version")
            # Within the rebroadcast period: no new fan-out, edge3 pulled the file itself.
            assert stats.fanout_chunks == fanned_out
            assert edge3.downloader.stats.fanout_received == 0
            assert edge3.downloader.stats.received == stats.pulled_chunks > 0
