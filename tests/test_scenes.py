"""Synthetic scenes: determinism, label validity, domains, video with ground truth."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from protocol.classes import CLASS_NAMES
from protocol.dataset_index import read_index
from demo.scenes import (
    DAY_HELMET_COLOURS,
    DOMAIN_HELMET_COLOURS,
    DOMAINS,
    NEW_HELMET_COLOURS,
    generate_dataset,
    load_ground_truth,
    render_scene,
    render_video,
)

SMALL = (320, 180)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def test_domains_and_palettes():
    assert {"day", "night", "new-colors"} <= set(DOMAINS)
    assert set(DAY_HELMET_COLOURS) == {"yellow", "white", "orange"}
    assert not set(DAY_HELMET_COLOURS) & set(NEW_HELMET_COLOURS)
    assert DOMAIN_HELMET_COLOURS["night"] == DAY_HELMET_COLOURS
    assert DOMAIN_HELMET_COLOURS["new-colors"] == NEW_HELMET_COLOURS


@pytest.mark.parametrize("domain", DOMAINS)
def test_render_scene_shapes_and_boxes_in_bounds(domain):
    for seed in range(6):
        image, boxes = render_scene(np.random.default_rng(seed), domain, SMALL)
        assert image.shape == (180, 320, 3) and image.dtype == np.uint8
        assert boxes.dtype == np.int32 and boxes.shape[1] == 5
        if len(boxes):
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
            assert (boxes[:, 2] <= 320).all() and (boxes[:, 3] <= 180).all()
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            assert set(boxes[:, 4].tolist()) <= set(range(len(CLASS_NAMES)))


def test_render_scene_is_deterministic_and_seed_sensitive():
    a = render_scene(np.random.default_rng(42), "night", SMALL)
    b = render_scene(np.random.default_rng(42), "night", SMALL)
    c = render_scene(np.random.default_rng(43), "night", SMALL)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_all_classes_appear_and_heads_span_the_size_range():
    boxes = np.concatenate([render_scene(np.random.default_rng(s), "day")[1] for s in range(40)])
    counts = np.bincount(boxes[:, 4], minlength=len(CLASS_NAMES))
    assert (counts > 0).all(), counts
    heads = boxes[np.isin(boxes[:, 4], (2, 3))]
    heights = heads[:, 3] - heads[:, 1]
    assert heights.min() <= 16 and heights.max() >= 60  # ~12 to ~80 px at 640x360


def test_every_person_has_head_or_is_occluded_not_the_reverse():
    """Each labelled head lies inside some person box: heads never float alone."""
    for seed in range(15):
        _, boxes = render_scene(np.random.default_rng(seed), "day")
        persons = boxes[boxes[:, 4] == 0]
        for head in boxes[np.isin(boxes[:, 4], (2, 3))]:
            inside = (persons[:, 0] <= head[0] + 1) & (persons[:, 1] <= head[1] + 1)
            inside &= (persons[:, 2] >= head[2] - 1) & (persons[:, 3] >= head[3] - 1)
            assert inside.any(), (seed, head)


def helmet_pixels(domain: str, seeds: range) -> np.ndarray:
    """Pixels from the upper part of every helmet-on box (the dome)."""
    pixels = []
    for seed in seeds:
        image, boxes = render_scene(np.random.default_rng(seed), domain)
        for x1, y1, x2, y2, cls in boxes:
            if cls == 2 and y2 - y1 >= 20:
                dome = image[
                    y1 + (y2 - y1) // 8 : y1 + (y2 - y1) // 3,
                    x1 + (x2 - x1) // 3 : x2 - (x2 - x1) // 3,
                ]
                pixels.append(dome.reshape(-1, 3))
    return np.concatenate(pixels)


def test_new_colors_helmets_look_different_from_day_helmets():
    def hue_histogram(pixels: np.ndarray) -> np.ndarray:
        hsv = cv2.cvtColor(pixels.reshape(-1, 1, 3), cv2.COLOR_BGR2HSV).reshape(-1, 3)
        saturated = hsv[hsv[:, 1] > 90]
        return np.bincount(saturated[:, 0] // 15, minlength=12) / max(len(saturated), 1)

    day = hue_histogram(helmet_pixels("day", range(30)))
    new = hue_histogram(helmet_pixels("new-colors", range(30)))
    # Day domes are yellow/orange (OpenCV hue < 45); new ones mostly blue, green, red, purple.
    assert day[:3].sum() > 0.8
    assert new[1:3].sum() < 0.25
    assert 0.5 * np.abs(day - new).sum() > 0.5


def test_night_is_darker_and_noisier_than_day():
    day = [render_scene(np.random.default_rng(s), "day", SMALL)[0] for s in range(5)]
    night = [render_scene(np.random.default_rng(s), "night", SMALL)[0] for s in range(5)]
    assert np.mean([im.mean() for im in night]) < 0.6 * np.mean([im.mean() for im in day])

    def noise(im: np.ndarray) -> float:
        gray = im.mean(axis=2)
        return float(np.abs(gray - cv2.blur(gray, (3, 3))).mean())

    assert np.mean([noise(im) for im in night]) > np.mean([noise(im) for im in day])


def test_unknown_domain_and_bad_size():
    with pytest.raises(ValueError, match="unknown domain 'dusk'; choose one of day, night"):
        render_scene(np.random.default_rng(0), "dusk")
    with pytest.raises(ValueError, match="too small"):
        render_scene(np.random.default_rng(0), "day", (10, 10))


def test_generate_dataset_is_byte_identical_for_a_seed_and_valid(tmp_path):
    a = generate_dataset(tmp_path / "a", 6, "day", seed=9, size=SMALL)
    b = generate_dataset(tmp_path / "b", 6, "day", seed=9, size=SMALL)
    c = generate_dataset(tmp_path / "c", 6, "day", seed=10, size=SMALL)
    assert a.read_text() == b.read_text()
    names = sorted(p.name for p in (tmp_path / "a" / "images").iterdir())
    assert len(names) == 6
    for name in names:
        assert (tmp_path / "a" / "images" / name).read_bytes() == (
            tmp_path / "b" / "images" / name
        ).read_bytes()
    assert a.read_text() != c.read_text().replace("s10-", "s9-")
    result = read_index(a)
    assert not result.problems and len(result.samples) == 6


def test_generate_dataset_append_continues_numbering(tmp_path):
    index = generate_dataset(tmp_path, 3, "new-colors", seed=1, size=SMALL)
    generate_dataset(tmp_path, 2, "new-colors", seed=1, size=SMALL, append=True)
    generate_dataset(tmp_path, 2, "night", seed=1, size=SMALL, append=True)
    lines = index.read_text().splitlines()
    assert len(lines) == 7
    paths = [line.split()[0] for line in lines]
    assert len(set(paths)) == 7
    assert paths[3] == "images/new-colors-s1-000003.jpg"
    # The fourth image equals what a single run of 5 produces at index 3.
    single = generate_dataset(tmp_path / "single", 5, "new-colors", seed=1, size=SMALL)
    assert (tmp_path / paths[3]).read_bytes() == (single.parent / paths[3]).read_bytes()
    # Without append, the index starts over.
    generate_dataset(tmp_path, 1, "day", seed=2, size=SMALL)
    assert len(index.read_text().splitlines()) == 1


def test_render_video_frames_match_ground_truth(tmp_path):
    out = tmp_path / "clip.mp4"
    fps = 10
    render_video(out, [("day", 1.5), ("night", 0.8)], seed=3, fps=fps, size=(256, 144))
    expected = 15 + 8
    capture = cv2.VideoCapture(str(out))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == expected
    gt_path = out.with_suffix(".gt.jsonl")
    records = [json.loads(line) for line in gt_path.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(expected))
    assert [r["domain"] for r in records] == ["day"] * 15 + ["night"] * 8
    gt = load_ground_truth(gt_path)
    assert sorted(gt) == list(range(expected))
    for boxes in gt.values():
        assert boxes.shape[1] == 5
        assert (boxes[:, 2] <= 256).all() and (boxes[:, 3] <= 144).all()
    assert all(len(gt[i]) > 0 for i in range(expected))  # every shot has people in it
    # People walk: consecutive frames are similar, not independent scenes.
    matched = total = 0
    for i in range(14):
        for box in gt[i]:
            total += 1
            same = gt[i + 1][gt[i + 1][:, 4] == box[4]]
            matched += any(iou(box, other) > 0.5 for other in same)
    assert matched / total > 0.8
    # The shot change at frame 15 is a new scene.
    assert not np.array_equal(gt[14], gt[15])


def test_render_video_rejects_bad_schedule(tmp_path):
    with pytest.raises(ValueError, match="schedule is empty"):
        render_video(tmp_path / "v.mp4", [], seed=0)
    with pytest.raises(ValueError, match="unknown domain 'noon'"):
        render_video(tmp_path / "v.mp4", [("noon", 1.0)], seed=0)
    with pytest.raises(ValueError, match="must be > 0 seconds"):
        render_video(tmp_path / "v.mp4", [("day", 0)], seed=0)


def test_load_ground_truth_names_the_bad_line(tmp_path):
    path = tmp_path / "x.gt.jsonl"
    path.write_text('{"frame": 0, "domain": "day", "boxes": []}\n{"frame": 1}\n')
    with pytest.raises(ValueError, match="line 2"):
        load_ground_truth(path)


def test_cli_synth_images_and_video(tmp_path):
    from typer.testing import CliRunner

    from edgeloop.cli import app

    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "synth",
            "--out",
            str(tmp_path / "d"),
            "--count",
            "3",
            "--domain",
            "fog",
            "--seed",
            "4",
            "--size",
            "160x90",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "d" / "data.txt").read_text().splitlines()) == 3
    assert cv2.imread(str(next((tmp_path / "d" / "images").iterdir()))).shape == (90, 160, 3)
    result = runner.invoke(
        app,
        [
            "synth",
            "--out",
            str(tmp_path / "v"),
            "--schedule",
            "day:0.4,night:0.2",
            "--fps",
            "10",
            "--size",
            "128x72",
            "--seed",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(load_ground_truth(tmp_path / "v" / "day-night-s1.gt.jsonl")) == 6
    bad = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), "--domain", "dusk"])
    assert bad.exit_code != 0 and "unknown domain 'dusk'" in bad.output
    bad = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), "--size", "big"])
    assert bad.exit_code != 0 and "not a size like 640x360" in bad.output
