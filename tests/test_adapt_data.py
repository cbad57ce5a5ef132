"""Reading a user's examples: layouts, image conversion, CSV parsing (fuzzed), splitting."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from reweigh.adapt import combine_licenses
from reweigh.adapt_template import adapt_data
from reweigh.adapt_template.adapt_data import BadData, detect, read_dataset, split
from reweigh.errors import UsageError
from reweigh.network import parse_interface

GREY = {"kind": "image", "shape": [1, 8, 8], "scale": 16}
FEATURES = {"kind": "features", "shape": [3], "scale": 1}
TEXT = {"kind": "text", "length": 12}


def _png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(path)
    return path


def test_a_dark_drawing_on_white_becomes_bright_ink_on_the_digits_scale(tmp_path: Path) -> None:
    paper = np.full((32, 32), 255)
    paper[8:16, 0:32] = 0  # a black band across the second quarter of the rows
    x = adapt_data.read_example(_png(tmp_path / "a.png", paper), GREY)
    assert x.shape == (1, 8, 8) and x.dtype == np.float32
    assert np.allclose(x[0, 2:4], 16.0) and np.allclose(x[0, :2], 0.0)
    assert np.allclose(x[0, 4:], 0.0)


def test_a_wide_image_is_centred_on_a_square_and_averaged_by_area(tmp_path: Path) -> None:
    wide = np.zeros((4, 8))
    wide[3, :] = 255  # bright ink on black: no inversion; its last row lit
    x = adapt_data.read_example(_png(tmp_path / "w.png", wide), {**GREY, "shape": [1, 2, 2]})
    # padded to 8x8 (two background rows above, two below): the lit row is row 5, so
    # each bottom 4x4 block is a quarter lit
    assert np.allclose(x, [[[0.0, 0.0], [4.0, 4.0]]])


def test_area_weights_keep_the_mean() -> None:
    for size_in, size_out in ((32, 8), (30, 8), (5, 8), (8, 8)):
        weights = adapt_data._area_weights(size_in, size_out)
        assert np.allclose(weights.sum(axis=1), 1.0)
        assert np.isclose(weights.sum() / size_out, 1.0)


def test_layouts_are_detected(tmp_path: Path) -> None:
    for name in ("a", "b"):
        _png(tmp_path / "img" / name / "x.png", np.zeros((8, 8)))
        (tmp_path / "txt" / name).mkdir(parents=True)
        (tmp_path / "txt" / name / "x.txt").write_text("hello")
    (tmp_path / "t.csv").write_text("label,f\n")
    assert [detect(tmp_path / k) for k in ("img", "txt", "t.csv")] == ["images", "text", "csv"]
    (tmp_path / "img" / ".DS_Store").write_bytes(b"\0")  # hidden files are not data
    assert detect(tmp_path / "img") == "images"


def test_text_files_become_byte_ids_padded_to_the_length(tmp_path: Path) -> None:
    for name, words in (("yes", ["sure", "of course"]), ("no", ["never", "no way at all!"])):
        for i, text in enumerate(words):
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / f"{i}.txt").write_text(text)
    x, y, classes = read_dataset(tmp_path, "text", TEXT)
    assert classes == ("no", "yes") and y.tolist() == [0, 0, 1, 1]
    assert x.shape == (4, 12) and x.dtype == np.int64
    assert x[0, :5].tolist() == [b + 1 for b in b"never"] and x[0, 5:].tolist() == [0] * 7
    (tmp_path / "no" / "2.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(BadData, match="not UTF-8"):
        read_dataset(tmp_path, "text", TEXT)


def test_the_split_holds_out_part_of_every_class_and_depends_only_on_the_seed() -> None:
    targets = np.repeat([0, 1, 2], [5, 10, 1])
    train, held = split(targets, 0, 0.25)
    assert sorted([*train, *held]) == list(range(16))
    assert np.bincount(targets[held], minlength=3).tolist() == [1, 3, 0]
    assert np.array_equal(split(targets, 0, 0.25)[1], held)
    assert not np.array_equal(split(targets, 1, 0.25)[1], held)
    assert len(split(targets, 0, 0.0)[1]) == 0


def test_licences_combine_into_one_expression() -> None:
    assert combine_licenses("MIT", "MIT") == "MIT"
    assert combine_licenses("GPL-3.0-or-later", "MIT OR Apache-2.0") == \
        "GPL-3.0-or-later AND (MIT OR Apache-2.0)"


def test_a_model_interface_with_odd_fields_is_refused_naming_the_field() -> None:
    good = {"format": "reweigh.model/1", "module": "model.py", "class": "Net",
            "classes_arg": "classes", "head": "fc", "input": GREY, "labels": ["a", "b"]}
    assert parse_interface(good, "m.json").labels == ("a", "b")
    for change, field in (({"module": "../x.py"}, "module"), ({"labels": ["a"]}, "labels"),
                          ({"labels": ["a", "a"]}, "labels"), ({"head": "fc;x"}, "head"),
                          ({"input": {"kind": "image", "shape": [2, 8, 8]}}, "input.shape"),
                          ({"input": {"kind": "audio"}}, "input.kind"), ({"extra": 1}, "extra")):
        with pytest.raises(UsageError, match=f"m.json: {field}"):
            parse_interface({**good, **change}, "m.json")


# --- fuzzing: whatever the file holds, the reader answers with arrays or BadData ----------

cells = st.one_of(st.text(alphabet=string.printable + "é\x00\ufeff", max_size=8),
                  st.floats(-2, 3).map(repr), st.sampled_from(["0", "1", "0.5", "cat", "dog"]))
headers = st.one_of(st.just(["label", "a", "b", "c"]), st.lists(cells, max_size=5),
                    st.just(["a", "label", "b", "c"]))
# rows that fit the header ["label", "a", "b", "c"] but for a label or a value out of range
fitting = st.tuples(st.sampled_from(["cat", "dog", "cat", "dog", "", " x"]),
                    st.lists(st.floats(0, 1.01).map(repr), min_size=3, max_size=3)).map(
                        lambda row: [row[0], *row[1]])


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=headers,
       rows=st.lists(st.one_of(fitting, fitting, fitting, st.lists(cells, min_size=3,
                                                                  max_size=5)), max_size=6),
       raw=st.binary(max_size=64), use_raw=st.booleans())
def test_any_csv_gives_arrays_or_bad_data_naming_the_file(
        tmp_path: Path, header: list[str], rows: list[list[str]], raw: bytes,
        use_raw: bool) -> None:
    table = tmp_path / "fuzz.csv"
    if use_raw:
        table.write_bytes(raw)
    else:
        table.write_text("\n".join(",".join(r) for r in [header, *rows]), encoding="utf-8")
    try:
        x, y, classes = read_dataset(table, "csv", FEATURES)
    except BadData as e:
        assert e.path == str(table) and e.reason
        return
    assert x.shape == (len(y), 3) and np.all((x >= 0) & (x <= 1))
    assert len(classes) >= 2 and set(y.tolist()) <= set(range(len(classes)))


names = st.sampled_from(["a", "b", ".h", "c d", " x", "e\u200b"])
files = st.sampled_from(["1.png", "2.jpg", "3.txt", "4.gif", ".hidden", "5.PNG"])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=st.dictionaries(names, st.lists(files, max_size=3, unique=True), max_size=4),
       loose=st.booleans(), data=st.data())
def test_any_folder_tree_gives_a_layout_or_bad_data(
        tmp_path_factory: pytest.TempPathFactory, tree: dict[str, list[str]], loose: bool,
        data: st.DataObject) -> None:
    root = tmp_path_factory.mktemp("tree")
    for folder, contents in tree.items():
        (root / folder).mkdir()
        for name in contents:
            good = data.draw(st.booleans())
            path = root / folder / name
            if name.lower().endswith((".png", ".jpg")) and good:
                Image.new("L", (9, 7), 200).save(path, format="PNG" if "png" in name.lower()
                                                 else "JPEG")
            else:
                path.write_bytes(data.draw(st.binary(max_size=16)))
    if loose:
        (root / "stray.png").write_bytes(b"")
    try:
        layout = detect(root)
        x, y, classes = read_dataset(root, layout, TEXT if layout == "text" else GREY)
    except BadData as e:
        assert e.reason and str(root) in e.path
        return
    assert layout in ("images", "text") and len(classes) >= 2 and len(x) == len(y)
