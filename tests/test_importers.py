"""YOLO and COCO imports into the seed's index, with tiny generated inputs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from protocol.dataset_index import read_index
from protocol.label_formats import (
    build_class_mapping,
    import_coco,
    import_yolo,
    parse_name_map,
    yolo_box,
)


def make_image(path: Path, width: int = 100, height: int = 50) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros((height, width, 3), np.uint8))
    return path


def boxes_by_name(index: Path) -> dict[str, list[list[int]]]:
    result = read_index(index)
    assert not result.problems, result.problems
    return {s.image.name: s.boxes.tolist() for s in result.samples}


# ---------------------------------------------------------------------------------------------
# pure parts


def test_yolo_box_converts_and_clips():
    assert yolo_box("2 0.5 0.5 0.2 0.4", 100, 50) == (2, [40, 15, 60, 35])
    assert yolo_box("0 0.05 0.5 0.2 0.2", 100, 50) == (0, [0, 20, 15, 30])  # clipped at the left
    assert yolo_box("0 1.5 0.5 0.2 0.2", 100, 50) == (0, None)  # entirely outside
    with pytest.raises(ValueError, match="expected 5 values"):
        yolo_box("0 0.5 0.5 0.2", 100, 50)
    with pytest.raises(ValueError, match="not numbers"):
        yolo_box("a 0.5 0.5 0.2 0.2", 100, 50)
    with pytest.raises(ValueError, match="no area"):
        yolo_box("0 0.5 0.5 0 0.2", 100, 50)


def test_class_mapping_by_normalised_name_and_explicit_map():
    mapping, unmatched = build_class_mapping(
        {0: "Helmet_On", 1: "head", 2: "Person", 3: "vest"},
        ("person", "helmet", "helmet-on", "helmet-off"),
        parse_name_map(["head=helmet-off"]),
    )
    assert mapping == {0: 2, 1: 3, 2: 0}
    assert unmatched == {3: "vest"}
    with pytest.raises(ValueError, match="'hat' is not one of"):
        build_class_mapping({0: "a"}, ("person",), {"a": "hat"})
    with pytest.raises(ValueError, match="must look like source=target"):
        parse_name_map(["head"])


# ---------------------------------------------------------------------------------------------
# YOLO


def yolo_tree(src: Path) -> None:
    make_image(src / "images" / "train" / "a.jpg")
    make_image(src / "images" / "train" / "b.png", 200, 100)
    make_image(src / "images" / "val" / "neg.jpg")
    (src / "labels" / "train").mkdir(parents=True)
    (src / "labels" / "train" / "a.txt").write_text(
        "2 0.5 0.5 0.2 0.4\n3 0.1 0.1 0.1 0.1\n4 0.5 0.5 0.1 0.1\n\n"
    )
    (src / "labels" / "train" / "b.txt").write_text(
        "0 0.5 0.5 0.5 0.5\nbroken line\n9 0.5 0.5 0.1 0.1\n"
    )
    (src / "data.yaml").write_text("names: [person, helmet, helmet_on, helmet_off, vest]\n")


def test_import_yolo_with_data_yaml(tmp_path):
    src = tmp_path / "yolo"
    yolo_tree(src)
    out = tmp_path / "out" / "data.txt"
    report = import_yolo(src, out)
    assert report.samples == 3 and report.negatives == 1 and report.boxes == 3
    assert report.unknown_classes == {"vest": 1}
    assert any("b.txt:2" in p for p in report.problems)
    assert any("class 9 has no name" in p for p in report.problems)
    boxes = boxes_by_name(out)
    assert boxes == {
        "a.jpg": [[40, 15, 60, 35, 2], [5, 2, 15, 8, 3]],
        "b.png": [[50, 25, 150, 75, 0]],
        "neg.jpg": [],
    }
    lines = out.read_text().splitlines()
    assert lines[0].startswith("images/train/a.jpg ")  # copied beside the index, relative
    assert (tmp_path / "out" / "images" / "val" / "neg.jpg").is_file()
    assert "vest (1 boxes)" in report.summary()


def test_import_yolo_flat_layout_with_classes_option_and_no_copy(tmp_path):
    src = tmp_path / "flat"
    make_image(src / "x.jpg")
    (src / "x.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    out = tmp_path / "out" / "data.txt"
    report = import_yolo(
        src, out, source_classes=["hat"], name_map={"hat": "helmet"}, copy_images=False
    )
    assert report.boxes == 1
    line = out.read_text().strip()
    assert line.startswith(str(src / "x.jpg"))  # referenced in place, absolute
    assert line.endswith(" 40,20,60,30,1")


def test_import_yolo_classes_txt_and_refusals(tmp_path):
    src = tmp_path / "yolo"
    make_image(src / "images" / "a.jpg")
    (src / "labels").mkdir()
    (src / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    out = tmp_path / "data.txt"
    with pytest.raises(ValueError, match="no class names"):
        import_yolo(src, out)
    (src / "classes.txt").write_text("person\n")
    assert import_yolo(src, out).boxes == 1
    with pytest.raises(FileExistsError, match="exists"):
        import_yolo(src, out)
    import_yolo(src, out, append=True)
    assert len(out.read_text().splitlines()) == 2
    import_yolo(src, out, overwrite=True)
    assert len(out.read_text().splitlines()) == 1
    with pytest.raises(FileNotFoundError, match="YOLO source folder not found"):
        import_yolo(tmp_path / "nope", out, overwrite=True)


# ---------------------------------------------------------------------------------------------
# COCO


def coco_tree(root: Path) -> Path:
    make_image(root / "imgs" / "one.jpg", 100, 50)
    make_image(root / "imgs" / "two.jpg", 60, 60)
    data = {
        "images": [
            {"id": 1, "file_name": "imgs/one.jpg", "width": 100, "height": 50},
            {"id": 2, "file_name": "imgs/two.jpg", "width": 60, "height": 60},
            {"id": 3, "file_name": "imgs/missing.jpg", "width": 10, "height": 10},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 7,
                "bbox": [10.2, 5.0, 20.0, 10.4],
                "iscrowd": 0,
            },
            {"id": 2, "image_id": 1, "category_id": 8, "bbox": [90, 40, 30, 30], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5], "iscrowd": 0},
            {"id": 4, "image_id": 1, "category_id": 7, "bbox": [0, 0, 50, 50], "iscrowd": 1},
            {"id": 5, "image_id": 99, "category_id": 7, "bbox": [0, 0, 5, 5]},
        ],
        "categories": [
            {"id": 7, "name": "helmet-on"},
            {"id": 8, "name": "Person"},
            {"id": 9, "name": "dog"},
        ],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_import_coco(tmp_path):
    annotations = coco_tree(tmp_path / "coco")
    out = tmp_path / "out" / "data.txt"
    report = import_coco(annotations, out)
    assert report.samples == 2 and report.boxes == 2 and report.negatives == 1
    assert report.unknown_classes == {"dog": 1}
    assert any("missing.jpg" in p for p in report.problems)
    assert any("1 crowd annotations" in p for p in report.problems)
    assert any("image ids not in 'images'" in p for p in report.problems)
    assert boxes_by_name(out) == {
        "one.jpg": [[10, 5, 30, 15, 2], [90, 40, 100, 50, 0]],
        "two.jpg": [],
    }


def test_import_coco_rejects_malformed_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": "x"}], "categories": []}))
    with pytest.raises(ValueError, match=r"not a COCO detection file: images\.0\.id"):
        import_coco(bad, tmp_path / "data.txt")
    bad.write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        import_coco(bad, tmp_path / "data.txt")


def test_cli_import_and_check(tmp_path):
    from typer.testing import CliRunner

    from edgeloop.cli import app

    runner = CliRunner()
    src = tmp_path / "yolo"
    yolo_tree(src)
    out = tmp_path / "out" / "data.txt"
    result = runner.invoke(
        app,
        ["data", "import", str(src), "--from", "yolo", "--out", str(out), "--map", "vest=person"],
    )
    assert result.exit_code == 0, result.output
    assert "3 samples (1 without boxes), 4 boxes" in result.output
    again = runner.invoke(app, ["data", "import", str(src), "--from", "yolo", "--out", str(out)])
    assert again.exit_code == 2 and "exists" in again.output
    checked = runner.invoke(app, ["data", "check", str(out)])
    assert checked.exit_code == 0, checked.output
    assert (
        "3 valid samples, 0 skipped lines; boxes: person 2, helmet 0, helmet-on 1, helmet-off 1"
        in checked.output
    )
    with out.open("a") as f:
        f.write("images/train/a.jpg 0,0,500,10,0\n")
    checked = runner.invoke(app, ["data", "check", str(out)])
    assert checked.exit_code == 1
    assert ":4: box 1: x2 (500) is outside the image width 100" in checked.output
    bad = runner.invoke(
        app, ["data", "import", str(src), "--from", "voc", "--out", str(tmp_path / "z.txt")]
    )
    assert bad.exit_code != 0 and "--from must be yolo or coco" in bad.output
