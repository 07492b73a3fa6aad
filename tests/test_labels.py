"""``edgeloop label import``: labelled samples reach the job's dataset index on the node holding
it, once however often they are sent; bad lines are named, never fatal; hard examples that were
labelled show so."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from agent_cloud import agent_config
from running_cloud import cloud
from test_cloud_cli import edgeloop
from test_cloud_daemon import DATASET, JOB, NODE, NS, setup_job, wait_for
from test_cloud_hardex import JOB_REF, fill_inbox_through_an_agent

from edge_agent.daemon import Agent
from edge_agent.label_intake import LABELLED_FOLDER, LabelIntake
from edgeloop.mqtt import Delivery, MqttClient, MqttSettings
from protocol import topics
from protocol.messages import LabelledSample, LabelReceipt
from protocol.dataset_index import read_index

pytestmark = pytest.mark.timeout(120)


def jpeg(path: Path, seed: int, size: tuple[int, int] = (48, 64)) -> Path:
    frame = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), frame)
    return path



def sample(image: Path, boxes: list[list[int]], dataset: str = DATASET) -> LabelledSample:
    data = image.read_bytes()
    return LabelledSample(node=NODE, dataset=dataset, sha256=hashlib.sha256(data).hexdigest(),
                          image=data, boxes=boxes, source=image.name)


# --- the node side, without a broker ----------------------------------------------------------


def intake(index: Path) -> LabelIntake:
    client = MqttClient(MqttSettings(url="mqtt://127.0.0.1:1", client_id=NODE))  # never started
    return LabelIntake(client, NODE, {DATASET: index}, num_classes=4)


def test_intake_adds_once_and_rejects_what_can_never_be_added(tmp_path):
    index = tmp_path / "data" / "data.txt"
    index.parent.mkdir()
    index.write_text("old.jpg 1,1,5,5,0")  # no final newline: the append must not glue onto it
    jpeg(index.parent / "old.jpg", 0)
    node = intake(index)
    good = sample(jpeg(tmp_path / "in" / "a.jpg", 1), [[1, 2, 30, 40, 2]])

    assert node.add(good).status == "added"
    assert node.add(good).status == "present"
    lines = index.read_text().splitlines()
    assert lines == ["old.jpg 1,1,5,5,0", f"{LABELLED_FOLDER}/{good.sha256}.jpg 1,2,30,40,2"]
    assert (index.parent / LABELLED_FOLDER / f"{good.sha256}.jpg").read_bytes() == good.image

    outside = node.add(sample(jpeg(tmp_path / "in" / "b.jpg", 2), [[1, 2, 65, 40, 1]]))
    assert (outside.status, outside.reason) == ("rejected", "box 1: x2 (65) is outside the image width 64")
    bad_class = node.add(sample(jpeg(tmp_path / "in" / "c.jpg", 3), [[1, 2, 6, 9, 4]]))
    assert bad_class.reason == "box 1: class 4 is out of range 0..3"
    other = node.add(sample(jpeg(tmp_path / "in" / "d.jpg", 4), [], dataset="ns/elsewhere"))
    assert "holds no dataset ns/elsewhere" in other.reason
    not_a_picture = tmp_path / "in" / "e.jpg"
    not_a_picture.write_bytes(b"\xff\xd8\xff not really a jpeg")
    assert node.add(sample(not_a_picture, [])).reason == "image cannot be read as a picture"
    assert len(index.read_text().splitlines()) == 2
    assert len(list((index.parent / LABELLED_FOLDER).iterdir())) == 1  # rejected images removed
    assert len(read_index(index).samples) == 2


# --- through the broker, the real cloud manager and a real agent -------------------------------


@pytest.mark.broker
async def test_the_same_sample_sent_twice_is_added_once(broker, tmp_path):
    index = tmp_path / "data" / "data.txt"
    index.parent.mkdir()
    index.touch()
    config = agent_config(broker.url, tmp_path / "agent", node=NODE, datasets={DATASET: index})
    receipts: list[LabelReceipt] = []

    async def on_receipt(delivery: Delivery) -> None:
        if isinstance(delivery.message, LabelReceipt):
            receipts.append(delivery.message)

    labelled = sample(jpeg(tmp_path / "a.jpg", 1), [[1, 2, 30, 40, 2]])
    async with Agent(config), MqttClient(MqttSettings(url=broker.url, client_id="cloud")) as cloud_client:
        cloud_client.subscribe(topics.label_ack(NODE), on_receipt)
        await cloud_client.wait_connected(10)
        await asyncio.sleep(0.5)  # the subscription is in place
        for _ in range(2):  # a redelivery, or a resend after a lost receipt
            await cloud_client.publish(topics.labels(NODE), labelled)
        await wait_for(lambda: len(receipts) == 2, timeout=20)
    assert [r.outcomes[labelled.key].status for r in receipts] == ["added", "present"]
    assert len(index.read_text().splitlines()) == 1


@pytest.mark.broker
async def test_label_import_through_the_cloud_adds_once_and_names_bad_lines(broker, tmp_path):
    data = tmp_path / "data" / "data.txt"  # the seed Dataset's url in these manifests
    data.parent.mkdir()
    data.touch()
    labels = tmp_path / "labels" / "data.txt"
    for i in range(3):
        jpeg(labels.parent / "images" / f"{i}.jpg", i)
    labels.write_text(
        "images/0.jpg 1,2,30,40,2\n"
        "images/1.jpg 3,3,20,20,3 5,5,9,9,0\n"
        "\n"
        "images/2.jpg 1,1,5,5,9\n"  # line 4: class out of range
        "images/missing.jpg 1,1,5,5,1\n"  # line 5: no such image
        "images/2.jpg\n"  # a negative sample
    )
    yolo = tmp_path / "yolo"
    jpeg(yolo / "images" / "y.jpg", 9)
    (yolo / "labels").mkdir()
    (yolo / "labels" / "y.txt").write_text("2 0.5 0.5 0.25 0.25\n")
    (yolo / "classes.txt").write_text("person\nhelmet\nhelmet-on\nhelmet-off\n")
    base = ("-n", NS, "--broker", broker.url)

    async with cloud(broker.url, tmp_path / "state") as daemon:
        await setup_job(broker.url, tmp_path)
        offline = await asyncio.to_thread(edgeloop, "label", "import", JOB, str(labels), *base)
        assert offline.returncode == 1 and "is offline; nothing was sent" in offline.stderr

        config = agent_config(broker.url, tmp_path / "agent", node=NODE, datasets={DATASET: data})
        async with Agent(config):
            await wait_for(lambda: NODE in daemon.manager.online_nodes())
            first = await asyncio.to_thread(edgeloop, "label", "import", JOB, str(labels), *base)
            assert first.returncode == 1, first.stderr  # some lines were skipped
            assert "3 added, 0 already there, 2 skipped" in first.stdout
            assert "data.txt:4: box 1: class 9 is out of range 0..3" in first.stderr
            assert "data.txt:5: image not found" in first.stderr
            assert len(data.read_text().splitlines()) == 3

            again = await asyncio.to_thread(edgeloop, "label", "import", JOB, str(labels), *base)
            assert "0 added, 3 already there" in again.stdout, again.stderr
            from_yolo = await asyncio.to_thread(edgeloop, "label", "import", JOB, str(yolo),
                                                *base, "--format", "yolo")
            assert from_yolo.returncode == 0, from_yolo.stderr
            assert "1 added" in from_yolo.stdout

            # the node's watcher counts them and the cloud hears of it, as for any new sample
            await wait_for(lambda: getattr(daemon.manager.store.dataset_samples(
                NS, "incremental-dataset"), "samples", None) == 4, timeout=20)
    lines = data.read_text().splitlines()
    assert len(lines) == len(set(lines)) == 4
    index = read_index(data)
    assert not index.problems
    assert sorted(s.boxes.tolist() for s in index.samples) == sorted(
        [[[1, 2, 30, 40, 2]], [[3, 3, 20, 20, 3], [5, 5, 9, 9, 0]], [], [[24, 18, 40, 30, 2]]])


async def export_hard_examples(url: str, tmp_path: Path, daemon, fmt: str) -> tuple[list[str], str]:
    """A job, three hard examples in its inbox (sent by a real agent), exported to
    ``tmp_path/export`` in ``fmt`` by the CLI; their ids and the command's output."""
    await setup_job(url, tmp_path)
    ids = await fill_inbox_through_an_agent(url, tmp_path, daemon)
    exported = await asyncio.to_thread(edgeloop, "hardex", "export", JOB, "-n", NS,
                                       "--broker", url, "--out", str(tmp_path / "export"),
                                       "--format", fmt)
    assert exported.returncode == 0, exported.stderr
    return ids, exported.stdout


async def import_three_labels(url: str, tmp_path: Path, daemon, data: Path, labels: Path,
                              fmt: str) -> None:
    """``edgeloop label import`` of ``labels`` while the dataset node runs: three added."""
    config = agent_config(url, tmp_path / "agent2", node=NODE, datasets={DATASET: data})
    async with Agent(config):
        await wait_for(lambda: NODE in daemon.manager.online_nodes())
        imported = await asyncio.to_thread(edgeloop, "label", "import", JOB, str(labels),
                                           "-n", NS, "--broker", url, "--format", fmt)
        assert imported.returncode == 0, imported.stderr
        assert "3 added" in imported.stdout


def empty_index(tmp_path: Path) -> Path:
    data = tmp_path / "data" / "data.txt"
    data.parent.mkdir()
    data.touch()
    return data


@pytest.mark.broker
async def test_exported_hard_examples_come_back_labelled(broker, tmp_path):
    data = empty_index(tmp_path)
    base = ("-n", NS, "--broker", broker.url)
    async with cloud(broker.url, tmp_path / "state") as daemon:
        ids, _ = await export_hard_examples(broker.url, tmp_path, daemon, "coco")
        await import_three_labels(broker.url, tmp_path, daemon, data,
                                  tmp_path / "export" / "annotations.json", "coco")
        inbox = daemon.manager.inbox
        assert inbox is not None
        assert {m["sha256"]: bool(m.get("labelled")) for m in inbox.examples(JOB_REF)} == \
            dict.fromkeys(ids, True)
        again = await asyncio.to_thread(edgeloop, "hardex", "export", JOB, *base,
                                        "--out", str(tmp_path / "export2"))
        assert again.returncode == 0, again.stderr
        assert "0 hard examples" in again.stdout and "3 already labelled" in again.stdout
    # the labelled images are the exported frames, found by the same sha256
    names = sorted(p.stem for p in (data.parent / LABELLED_FOLDER).iterdir())
    assert names == sorted(ids)


def test_the_same_image_sent_as_png_and_as_jpg_is_one_line_saved_as_what_it_is(tmp_path):
    index = tmp_path / "data" / "data.txt"
    index.parent.mkdir()
    index.write_text("")
    node = intake(index)
    png = tmp_path / "in" / "a.png"
    png.parent.mkdir()
    cv2.imwrite(str(png), np.random.default_rng(5).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    as_png = sample(png, [[1, 2, 30, 40, 2]]).model_copy(update={"image_format": "png"})
    as_jpg = as_png.model_copy(update={"image_format": "jpg"})
    assert as_png.key == as_jpg.key
    assert node.add(as_jpg).status == "added"  # PNG bytes that claim to be a JPEG
    assert node.add(as_png).status == "present"
    assert index.read_text().splitlines() == [f"{LABELLED_FOLDER}/{as_png.sha256}.png 1,2,30,40,2"]
    assert [p.name for p in (index.parent / LABELLED_FOLDER).iterdir()] == [f"{as_png.sha256}.png"]
