"""The seed's index format: parsing, validation against real image files, appending."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.classes import CLASS_NAMES, parse_class_names
from protocol.dataset_index import (
    Sample,
    append_samples,
    count_valid_samples,
    format_line,
    image_size,
    parse_line,
    read_index,
)


def write_image(path: Path, width: int = 64, height: int = 48, flags: tuple[int, ...] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((height, width, 3), 127, np.uint8)
    ok, data = cv2.imencode(path.suffix, image, list(flags))
    assert ok
    path.write_bytes(data.tobytes())
    return path


# ---------------------------------------------------------------------------------------------
# classes


def test_class_names_are_the_seeds():
    assert CLASS_NAMES == ("person", "helmet", "helmet-on", "helmet-off")
    assert parse_class_names("person,helmet,helmet-on,helmet-off") == CLASS_NAMES
    assert parse_class_names(" person , helmet ") == ("person", "helmet")


@pytest.mark.parametrize(
    ("value", "needle"),
    [("", "empty"), ("person,,helmet", "name 1 is empty"), ("a,b,a", "'a' appears more than once")],
)
def test_parse_class_names_rejects(value, needle):
    with pytest.raises(ValueError, match=needle):
        parse_class_names(value)


# ---------------------------------------------------------------------------------------------
# parse_line (pure)


def test_parse_line_relative_absolute_and_negative(tmp_path):
    s = parse_line("img/a.jpg 1,2,30,40,0 5,6,7,8,3", 7, tmp_path, 4)
    assert s.image == tmp_path / "img" / "a.jpg"
    assert s.boxes.dtype == np.int32
    assert s.boxes.tolist() == [[1, 2, 30, 40, 0], [5, 6, 7, 8, 3]]
    assert s.line_no == 7
    absolute = parse_line("/data/x.jpg 1,1,2,2,1", 1, tmp_path, 4)
    assert absolute.image == Path("/data/x.jpg")
    negative = parse_line("neg.jpg", 2, tmp_path, 4)
    assert negative.boxes.shape == (0, 5)


def test_parse_line_rounds_decimal_corners(tmp_path):
    assert parse_line("a.jpg 1.4,2.6,10.0,20,1", 1, tmp_path, 4).boxes.tolist() == [
        [1, 3, 10, 20, 1]
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("a.jpg 1,2,3,4", "box 1: '1,2,3,4' has 4 comma-separated values, expected 5"),
        ("a.jpg 1,2,3,4,0 1,2,3,4,0,9", "box 2: '1,2,3,4,0,9' has 6 comma-separated values"),
        ("a.jpg 1,x,3,4,0", "box 1: y1 'x' is not a number"),
        ("a.jpg 1,2,3,4,c", "box 1: class 'c' is not an integer"),
        ("a.jpg 1,2,3,4,4", "box 1: class 4 is out of range 0..3"),
        ("a.jpg 1,2,3,4,-1", "box 1: class -1 is out of range 0..3"),
        ("a.jpg 5,2,5,4,0", "box 1: x2 (5) must be greater than x1 (5)"),
        ("a.jpg 1,9,3,4,0", "box 1: y2 (4) must be greater than y1 (9)"),
        ("a.jpg -1,2,3,4,0", "box 1: negative corner (-1,2)"),
        ("a.jpg 1,2,nan,4,0", "box 1: x2 'nan' is not a finite number"),
    ],
)
def test_parse_line_reasons(tmp_path, line, reason):
    with pytest.raises(ValueError) as info:
        parse_line(line, 1, tmp_path, 4)
    assert str(info.value).startswith(reason)


def test_parse_line_respects_num_classes(tmp_path):
    assert parse_line("a.jpg 1,2,3,4,5", 1, tmp_path, 6).boxes[0, 4] == 5
    with pytest.raises(ValueError, match="out of range 0..1"):
        parse_line("a.jpg 1,2,3,4,2", 1, tmp_path, 2)


# ---------------------------------------------------------------------------------------------
# image size from headers


@pytest.mark.parametrize(
    ("name", "flags"),
    [("a.jpg", ()), ("p.jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)), ("b.png", ()), ("c.bmp", ())],
)
def test_image_size_matches_decoder(tmp_path, name, flags):
    path = write_image(tmp_path / name, 123, 45, flags)
    decoded = cv2.imread(str(path))
    assert image_size(path) == (decoded.shape[1], decoded.shape[0]) == (123, 45)


def test_image_size_honours_exif_rotation_like_the_decoder(tmp_path):
    plain = write_image(tmp_path / "plain.jpg", 80, 20).read_bytes()
    tiff = (
        b"MM\x00*\x00\x00\x00\x08"
        + b"\x00\x01"
        + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"
        + b"\x00" * 4
    )
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(plain[:2] + app1 + plain[2:])
    decoded = cv2.imread(str(rotated))
    assert (decoded.shape[1], decoded.shape[0]) == (20, 80)  # orientation 6: turned a quarter
    assert image_size(rotated) == (20, 80)


def test_image_size_follows_a_replaced_file(tmp_path):
    path = write_image(tmp_path / "a.jpg", 100, 50)
    assert image_size(path) == (100, 50)
    write_image(tmp_path / "a.jpg", 40, 30)
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse-clock filesystems
    assert image_size(path) == (40, 30)


def test_image_size_of_garbage_is_none(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert image_size(bad) is None
    assert image_size(tmp_path / "missing.jpg") is None


# ---------------------------------------------------------------------------------------------
# read_index


def test_read_index_reports_bad_lines_and_keeps_good_ones(tmp_path):
    write_image(tmp_path / "images" / "ok.jpg", 640, 360)
    write_image(tmp_path / "images" / "neg.png", 32, 32)
    (tmp_path / "images" / "broken.jpg").write_bytes(b"garbage")
    lines = [
        "images/ok.jpg 10,10,100,100,0 600,300,640,360,3",  # 1: good, box touching the border
        "",  # 2: blank, ignored
        "images/missing.jpg 1,1,2,2,0",  # 3
        "images/broken.jpg 1,1,2,2,0",  # 4
        "images/ok.jpg 10,10,700,100,1",  # 5
        "images/ok.jpg 10,10,100,361,1",  # 6
        "images/ok.jpg 10,10,100,100,9",  # 7
        "images/neg.png",  # 8: good negative
        "   ",  # 9: blank
        "images/ok.jpg 1,2,3",  # 10
    ]
    index = tmp_path / "data.txt"
    index.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    result = read_index(index)
    assert [s.line_no for s in result.samples] == [1, 8]
    assert result.samples[0].image == (tmp_path / "images" / "ok.jpg").resolve()
    reasons = {p.line_no: p.reason for p in result.problems}
    assert sorted(reasons) == [3, 4, 5, 6, 7, 10]
    assert reasons[3].startswith("image not found")
    assert reasons[4].startswith("image unreadable")
    assert reasons[5] == "box 1: x2 (700) is outside the image width 640"
    assert reasons[6] == "box 1: y2 (361) is outside the image height 360"
    assert "class 9 is out of range" in reasons[7]
    assert result.problems[0].line == "images/missing.jpg 1,1,2,2,0"
    assert str(result.problems[0]).startswith("line 3: image not found")


def test_read_index_without_image_checks(tmp_path):
    index = tmp_path / "data.txt"
    index.write_text("nowhere.jpg 1,1,2,2,0\nbad\t1,1\n", encoding="utf-8")
    result = read_index(index, check_images=False)
    assert [s.line_no for s in result.samples] == [1]
    assert [p.line_no for p in result.problems] == [2]


def test_read_index_bom_and_missing_file(tmp_path):
    write_image(tmp_path / "a.jpg")
    index = tmp_path / "data.txt"
    index.write_bytes("\ufeffa.jpg 1,1,5,5,2\n".encode())
    assert len(read_index(index).samples) == 1
    with pytest.raises(FileNotFoundError, match="dataset index not found"):
        read_index(tmp_path / "nope.txt")


def test_count_valid_samples_counts_parsable_lines_with_existing_images(tmp_path):
    write_image(tmp_path / "a.jpg", 10, 10)
    index = tmp_path / "data.txt"
    # The out-of-bounds box is only caught by read_index's image check: counting stays cheap.
    index.write_text("a.jpg 1,1,5,5,0\nb.jpg 1,1,5,5,0\na.jpg 1,1,50,50,0\na.jpg 1,1\n\na.jpg\n")
    assert count_valid_samples(index) == 3
    assert len(read_index(index).samples) == 2


# ---------------------------------------------------------------------------------------------
# format_line / append_samples


def test_format_line_relative_inside_base_absolute_outside(tmp_path):
    inside = Sample(tmp_path / "d" / "x.jpg", np.array([[1, 2, 3, 4, 1]]))
    assert format_line(inside, tmp_path) == "d/x.jpg 1,2,3,4,1"
    outside = Sample(Path("/elsewhere/y.jpg"), np.zeros((0, 5)))
    assert format_line(outside, tmp_path) == "/elsewhere/y.jpg"
    with pytest.raises(ValueError, match="whitespace"):
        format_line(Sample(tmp_path / "a b.jpg"), tmp_path)


def test_sample_rejects_bad_box_shape():
    with pytest.raises(ValueError, match=r"shape \(N, 5\)"):
        Sample(Path("/a.jpg"), np.zeros((2, 4)))


def test_append_samples_repairs_missing_newline_and_is_all_or_nothing(tmp_path):
    index = tmp_path / "data.txt"
    index.write_text("old.jpg 1,1,2,2,0")  # no trailing newline
    n = append_samples(
        index, [Sample(tmp_path / "n1.jpg", [[1, 1, 3, 3, 2]]), Sample(tmp_path / "n2.jpg")]
    )
    assert n == 2
    assert index.read_text() == "old.jpg 1,1,2,2,0\nn1.jpg 1,1,3,3,2\nn2.jpg\n"
    before = index.read_bytes()
    with pytest.raises(ValueError):
        append_samples(index, [Sample(tmp_path / "fine.jpg"), Sample(tmp_path / "bad name.jpg")])
    assert index.read_bytes() == before
    assert append_samples(index, []) == 0
    assert append_samples(tmp_path / "new" / "data.txt", [Sample(tmp_path / "new" / "a.jpg")]) == 1
    assert (tmp_path / "new" / "data.txt").read_text() == "a.jpg\n"


boxes_strategy = st.lists(
    st.tuples(
        st.integers(0, 5000),
        st.integers(0, 5000),
        st.integers(1, 500),
        st.integers(1, 500),
        st.integers(0, 3),
    ).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3], t[4]]),
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(
    boxes=boxes_strategy,
    name=st.from_regex(r"[A-Za-z0-9_\-]{1,12}(/[A-Za-z0-9_\-]{1,8})?\.jpg", fullmatch=True),
)
def test_format_parse_round_trip(tmp_path_factory, boxes, name):
    base = tmp_path_factory.getbasetemp()
    sample = Sample(base / name, np.array(boxes, np.int32).reshape(-1, 5))
    back = parse_line(format_line(sample, base), 3, base, 4)
    assert back.image == sample.image
    assert np.array_equal(back.boxes, sample.boxes)
