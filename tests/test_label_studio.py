"""Label Studio's formats: ``hardex export --format label-studio`` writes tasks with the model's
boxes as predictions; ``label import --format label-studio`` reads Label Studio's JSON export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from running_cloud import cloud
from test_labels import empty_index, export_hard_examples, import_three_labels, jpeg

from protocol.dataset_index import Sample, read_index
from protocol.label_formats import import_label_studio, write_label_studio

CLASSES = ["person", "helmet", "helmet-on", "helmet-off"]


def rect(x: float, y: float, w: float, h: float, label: str, rotation: float = 0) -> dict:
    """A ``rectanglelabels`` result as Label Studio exports it (percent of the image)."""
    return {"id": "r", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
            "original_width": 64, "original_height": 48, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation,
                      "rectanglelabels": [label]}}


def test_a_label_studio_export_becomes_index_lines(tmp_path):
    for name in ("a", "b", "c", "d", "e"):
        jpeg(tmp_path / "images" / f"{name}.jpg", ord(name))  # 64 x 48
    export = [
        {"id": 1, "data": {"image": "images/a.jpg"}, "annotations": [
            {"id": 7, "was_cancelled": True, "result": []},
            {"id": 8, "was_cancelled": False, "result": [
                rect(25, 50, 25, 25, "helmet-on"), rect(0, 0, 10, 10, "hat"),
                {"type": "choices", "value": {"choices": ["night"]}}]}]},
        {"id": 2, "data": {"image": "/data/local-files/?d=site/images/b.jpg"},
         "annotations": [{"result": []}]},  # a person said: nothing in it
        {"id": 3, "data": {"image": "/data/upload/1/0a1b2c3d-c.jpg"},
         "annotations": [{"result": [rect(10, 10, 20, 20, "Helmet_Off"),
                                     rect(5, 5, 10, 10, "person", rotation=30),
                                     rect(120, 5, 10, 10, "person")]}]},
        {"id": 4, "data": {"image": "images/d.jpg"}, "annotations": [],
         "predictions": [{"result": [rect(1, 1, 5, 5, "person")]}]},
        {"id": 5, "data": {"image": "images/missing.jpg"}, "annotations": [{"result": []}]},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    report = import_label_studio(path, tmp_path / "out" / "data.txt", CLASSES, copy_images=False)
    index = read_index(tmp_path / "out" / "data.txt")
    assert {s.image.name: s.boxes.tolist() for s in index.samples} == {
        "a.jpg": [[16, 24, 32, 36, 2]],
        "b.jpg": [],
        "c.jpg": [[6, 5, 19, 14, 3]],
    }
    assert report.unknown_classes == {"hat": 1}
    assert report.problems == [
        "task 3 (0a1b2c3d-c.jpg): box 2: rotated by 30 degrees; the index holds upright boxes "
        "only",
        "task 3 (0a1b2c3d-c.jpg): box 3: no area inside the 64x48 image",
        "task 4 (d.jpg): not annotated yet; skipped",
        "task 5 (missing.jpg): image images/missing.jpg not found beside the export; skipped",
    ]
    path.write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="expected a list of tasks"):
        import_label_studio(path, tmp_path / "out2" / "data.txt", CLASSES)


def test_exported_predictions_accepted_as_they_are_import_as_the_same_boxes(tmp_path):
    image = jpeg(tmp_path / "images" / "x.jpg", 1)
    boxes = np.array([[3, 4, 30, 40, 2], [0, 0, 64, 48, 0]], np.int32)
    tasks_path = tmp_path / "tasks.json"
    assert write_label_studio(tasks_path, [Sample(image=image, boxes=boxes)], CLASSES,
                              [[0.4, 0.3]]) == 2
    (task,) = json.loads(tasks_path.read_text())
    assert task["data"] == {"image": "images/x.jpg"}
    (prediction,) = task["predictions"]
    assert prediction["result"][0]["value"]["rectanglelabels"] == ["helmet-on"]
    assert prediction["result"][0]["score"] == 0.4
    task["annotations"] = [{"result": prediction["result"]}]  # accepted without change
    tasks_path.write_text(json.dumps([task]))
    import_label_studio(tasks_path, tmp_path / "back" / "data.txt", CLASSES, copy_images=False)
    (sample,) = read_index(tmp_path / "back" / "data.txt").samples
    assert sample.boxes.tolist() == boxes.tolist()


@pytest.mark.broker
@pytest.mark.timeout(120)
async def test_hard_examples_go_to_label_studio_and_come_back(broker, tmp_path):
    data = empty_index(tmp_path)
    async with cloud(broker.url, tmp_path / "state") as daemon:
        ids, stdout = await export_hard_examples(broker.url, tmp_path, daemon, "label-studio")
        out = tmp_path / "export"
        assert f"3 hard examples, 6 proposed boxes -> {out / 'tasks.json'}" in stdout
        tasks = json.loads((out / "tasks.json").read_text())
        # in Label Studio: each prediction is accepted, the first box relabelled as a helmet
        for task in tasks:
            result = task["predictions"][0]["result"]
            result[0]["value"]["rectanglelabels"] = ["helmet"]
            task["annotations"] = [{"id": 1, "was_cancelled": False, "result": result}]
            task["data"]["image"] = "/data/upload/3/1f2e3d4c-" + Path(task["data"]["image"]).name
        (out / "export.json").write_text(json.dumps(tasks))
        await import_three_labels(broker.url, tmp_path, daemon, data, out / "export.json",
                                  "label-studio")
    index = read_index(data)
    assert sorted(s.image.stem for s in index.samples) == sorted(ids)
    assert all(s.boxes.tolist()[0] == [2, 4, 20, 30, 1] for s in index.samples)
