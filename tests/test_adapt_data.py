"""Reading a user's examples: layouts, image conversion, CSV parsing (fuzzed), splitting;
the random changes training applies to images (augment), and how a recipe records them."""

from __future__ import annotations

import string
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from reweigh.adapt import (
    AUGMENT,
    AUGMENT_KINDS,
    PATIENCE,
    Data,
    Settings,
    combine_licenses,
    params,
    params_toml,
)
from reweigh.adapt_template import adapt_data, augment
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


def test_grey_paper_becomes_the_ground_and_white_paper_is_left_as_it_was(
        tmp_path: Path) -> None:
    paper = np.full((32, 32), 255)
    paper[8:16, :] = 0
    white = adapt_data.read_example(_png(tmp_path / "white.png", paper), GREY)
    grey_paper = np.where(paper == 255, 205, 0)  # the same band on grey paper
    grey = adapt_data.read_example(_png(tmp_path / "grey.png", grey_paper), GREY)
    assert np.array_equal(grey, white)  # the paper's grey is taken away, full ink kept
    wide = np.full((16, 32), 215)  # a wide sheet of grey paper, padded to a square
    wide[4:12, 8:24] = 40  # grey pencil: rows 3-4 and columns 2-5 of the 8x8
    x = adapt_data.read_example(_png(tmp_path / "wide.png", wide), GREY)
    expected = np.zeros((1, 8, 8))
    expected[0, 3:5, 2:6] = 16 * (215 - 40) / 215  # no veil of grey, no frame around it
    assert np.allclose(x, expected, atol=1e-4)


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


# --- augmentation ------------------------------------------------------------------------

def _batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand(16, 1, 8, 8, generator=g)  # (N, C, H, W) on 0..1


def _changed(x: torch.Tensor, settings: dict, seed: int = 0) -> torch.Tensor:
    return augment.augment(x, settings, torch.Generator().manual_seed(seed))


def test_augmentation_is_drawn_from_the_generator_alone_and_leaves_the_batch_alone() -> None:
    x = _batch()
    kept = x.clone()
    first = _changed(x, AUGMENT)
    assert torch.equal(x, kept) and first.shape == x.shape and first.dtype == x.dtype
    assert torch.equal(first, _changed(x, AUGMENT))  # the same draws, the same bits
    assert not torch.equal(first, _changed(x, AUGMENT, seed=1))
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert _changed(x, {}) is x
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = _changed(x, AUGMENT)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, first)


def test_each_kind_of_augmentation_does_what_it_says() -> None:
    ones = torch.ones(4, 1, 8, 8)
    # zoomed by one half: the picture fills the middle 4x4, the ground (0) the rest
    half = _changed(ones, {"scale": [0.5, 0.5]})
    assert torch.allclose(half.sum(dim=(1, 2, 3)), torch.full((4,), 16.0))
    assert torch.equal(half[:, 0, 2:6, 2:6], torch.ones(4, 4, 4))
    assert torch.allclose(_changed(ones, {"ink": [0.5, 0.5]}), ones * 0.5)
    dot = torch.zeros(64, 1, 8, 8)
    dot[:, 0, 3:5, 3:5] = 1.0  # a 2x2 dot in the middle
    moved = _changed(dot, {"shift": 0.25})  # up to 2 pixels each way
    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    mass = moved.sum(dim=(1, 2, 3))
    centre_y = (moved[:, 0] * rows).sum(dim=(1, 2)) / mass
    centre_x = (moved[:, 0] * cols).sum(dim=(1, 2)) / mass
    assert torch.allclose(mass, torch.full((64,), 4.0), atol=1e-5)  # moved, not lost
    assert float((centre_y - 3.5).abs().max()) <= 2.0 + 1e-5
    assert float((centre_x - 3.5).abs().max()) > 1.0  # and it does move
    turned = _changed(dot, {"rotate": 180.0})
    assert torch.allclose(turned.sum(dim=(1, 2, 3)), torch.full((64,), 4.0), atol=0.5)
    grey = torch.full((8, 1, 8, 8), 0.5)
    noise = _changed(grey, {"noise": 0.05}) - grey
    assert 0.04 < float(noise.std()) < 0.06


@pytest.mark.parametrize(("settings", "reason"), [
    ({"blur": 1}, "params.augment.blur: unknown"),
    ({"scale": 0.5}, "params.augment.scale: expected [low, high]"),
    ({"scale": [1.2, 0.5]}, "params.augment.scale: expected 0 < low <= high"),
    ({"ink": [0, 1]}, "params.augment.ink: expected 0 < low <= high"),
    ({"noise": "a lot"}, "params.augment.noise: expected a number"),
    ({"noise": 2}, "params.augment.noise: out of range"),
    ({"rotate": 400}, "params.augment.rotate: out of range"),
    ({"shift": float("nan")}, "params.augment.shift: expected a number"),
])
def test_a_hand_edited_augmentation_is_refused_naming_the_setting(
        settings: dict, reason: str) -> None:
    augment.check(AUGMENT)
    assert AUGMENT_KINDS == augment.KINDS  # reweigh.adapt's copy, kept apart from torch
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        augment.check(settings)


def _params(kind: str = "image", **options: object) -> dict:
    data = Data(Path("d"), "images", ("a", "b"), {"a": 4, "b": 4})
    text = "\n".join(params_toml(params(Settings("x", **options), data, kind)))
    return tomllib.loads(text)["params"]


def test_the_recipe_records_the_augmentation_and_the_early_stopping_asked_for() -> None:
    default = _params()
    assert default["augment"] == AUGMENT and default["patience"] == PATIENCE
    assert _params(augment=())["augment"] == {}
    assert _params(augment=("noise", "shift")) ["augment"] == {
        "shift": AUGMENT["shift"], "noise": AUGMENT["noise"]}
    assert _params(held_out=0.0)["patience"] == 0 and _params(patience=7)["patience"] == 7
    assert _params("features")["augment"] == {} and _params("text")["augment"] == {}
    with pytest.raises(UsageError, match="--augment: the base network takes text"):
        _params("text", augment=("noise",))
