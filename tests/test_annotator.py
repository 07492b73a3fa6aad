"""The demo's simulated annotator: hard-example images matched to the frames of the videos the
camera played (after codec noise and a resize), labelled from the generator's ground truth."""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest

from demo.annotator import (
    MAX_DISTANCE,
    FrameIndex,
    SimulatedAnnotator,
    scale_boxes,
    thumbnail,
    video_thumbnails,
)
from protocol.dataset_index import read_index
from demo.scenes import load_ground_truth, render_video

SIZE = (320, 180)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    out = {}
    for n, domain in enumerate(("day", "night")):
        video = render_video(folder / f"{domain}.mp4", [(domain, 0.8)] * 3, seed=n, fps=10,
                             size=SIZE)
        out[domain] = (video, video.with_suffix(".gt.jsonl"))
    return out


def frames_of(video):
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    capture.release()
    return frames


def as_streamed(image, size=(640, 360), quality=70):
    """What a frame looks like after another codec and a different decode size."""
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def test_each_frame_matches_itself_or_a_neighbour_after_codec_noise(videos):
    index = FrameIndex()
    for domain, (video, _) in videos.items():
        index.add(domain, video_thumbnails(video))
    for domain, (video, _) in videos.items():
        for i, image in enumerate(frames_of(video)):
            match = index.nearest(thumbnail(as_streamed(image)))
            assert match.domain == domain
            assert abs(match.frame - i) <= 1, (domain, i, match)
            assert match.distance < MAX_DISTANCE


def test_an_image_from_no_video_is_far_from_every_frame(videos):
    index = FrameIndex()
    index.add("day", video_thumbnails(videos["day"][0]))
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (180, 320, 3), dtype=np.uint8)
    assert index.nearest(thumbnail(noise)).distance > MAX_DISTANCE


def test_an_empty_index_says_so():
    with pytest.raises(ValueError, match="no video frames"):
        FrameIndex().nearest(np.zeros(10, np.float32))


def test_scale_boxes_moves_them_to_the_image_size_and_keeps_classes():
    boxes = np.array([[10, 20, 30, 40, 3], [0, 0, 319, 179, 1]], np.int32)
    scaled = scale_boxes(boxes, (320, 180), (640, 360))
    assert scaled.tolist() == [[20, 40, 60, 80, 3], [0, 0, 638, 358, 1]]
    assert scale_boxes(boxes, (320, 180), (320, 180)).tolist() == boxes.tolist()
    assert scale_boxes(np.zeros((0, 5)), (1, 1), (2, 2)).shape == (0, 5)


def put_in_inbox(inbox, image, frame_index=12345):
    """An example as the cloud's inbox stores it: <sha>.jpg and <sha>.json."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    blob = data.tobytes()
    sha = hashlib.sha256(blob).hexdigest()
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / f"{sha}.jpg").write_bytes(blob)
    (inbox / f"{sha}.json").write_text(json.dumps({
        "sha256": sha, "image": f"{sha}.jpg", "node": "edge0", "job": "ns/job",
        "sidecar": {"frame_index": frame_index, "time": 1.5, "boxes": [], "scores": [],
                    "classes": []},
    }))
    return sha


def test_annotator_labels_examples_from_ground_truth_once(videos, tmp_path):
    video, gt = videos["night"]
    frames = frames_of(video)
    truth = load_ground_truth(gt)
    frame_no = next(i for i in range(len(frames)) if len(truth[i]) > 0)
    inbox = tmp_path / "inbox"
    good = put_in_inbox(inbox, as_streamed(frames[frame_no]))
    rng = np.random.default_rng(1)
    bad = put_in_inbox(inbox, rng.integers(0, 255, (360, 640, 3), dtype=np.uint8))
    index = tmp_path / "dataset" / "data.txt"
    annotator = SimulatedAnnotator(inbox, index, tmp_path / "journal.jsonl")
    annotator.add_video("day", *videos["day"])
    annotator.add_video("night", video, gt)

    records = {r.sha256: r for r in annotator.run_once()}

    assert records[bad].refused and "no video frame" in records[bad].refused
    label = records[good]
    assert label.refused is None and label.domain == "night"
    samples = read_index(index).samples
    assert len(samples) == 1
    sample = samples[0]
    assert sample.image == label.image and sample.image.parent == index.parent / "images"
    assert sample.image.read_bytes() == (inbox / f"{good}.jpg").read_bytes()
    expected = scale_boxes(truth[label.frame], SIZE, (640, 360))
    assert sample.boxes.tolist() == expected.tolist()
    assert annotator.counts() == {"night": 1, "refused": 1}

    # handled once, also by a new annotator reading the same journal
    assert annotator.run_once() == []
    again = SimulatedAnnotator(inbox, index, tmp_path / "journal.jsonl")
    again.add_video("night", video, gt)
    assert again.run_once() == []
    assert len(read_index(index).samples) == 1


def test_two_videos_of_one_domain_label_under_that_domain(videos, tmp_path):
    video, gt = videos["night"]
    other = render_video(tmp_path / "night2.mp4", [("night", 0.8)] * 2, seed=99, fps=10, size=SIZE)
    inbox = tmp_path / "inbox"
    image = frames_of(other)[3]
    sha = put_in_inbox(inbox, as_streamed(image))
    annotator = SimulatedAnnotator(inbox, tmp_path / "data.txt", tmp_path / "journal.jsonl")
    annotator.add_video("night", video, gt)
    annotator.add_video("night", other, other.with_suffix(".gt.jsonl"), key="night#1")
    (record,) = annotator.run_once()
    assert record.sha256 == sha and record.domain == "night" and abs(record.frame - 3) <= 1
    truth = load_ground_truth(other.with_suffix(".gt.jsonl"))[record.frame]
    assert read_index(tmp_path / "data.txt").samples[0].boxes.tolist() == \
        scale_boxes(truth, SIZE, (640, 360)).tolist()
