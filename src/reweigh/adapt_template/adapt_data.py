"""Reading a user's examples into arrays shaped like the base network's input.

Three layouts: a folder with one sub-folder per class holding PNG or JPEG images,
or holding UTF-8 `.txt` files (for text networks); or a CSV file with a header, a
label column and one column per input value. Images are decoded (Pillow), made grey
or RGB as the network takes them, turned ink-bright on a dark ground when they are
grey and drawn dark on light, the paper's own grey taken as the ground, padded to a
square, area-averaged to the input size and put on the network's 0..scale range; the
same code reads the data in the build and when a program recognises one file, so both
see the same input.

Every problem raises `BadData` naming the file and the reason. This file is copied
into each derived recipe and depends on numpy and Pillow only.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TEXT_SUFFIXES = (".txt",)
LAYOUTS = ("images", "text", "csv")
MAX_CLASSES = 1000
MAX_LABEL = 64
MAX_PIXELS = 4096 * 4096
MAX_ROWS = 1_000_000


class BadData(ValueError):
    """The user's data cannot be used: `path` names the file, `reason` says why."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def label_problem(label: object) -> str | None:
    """Why a class name cannot be used, or None: names are shown to users and written
    to JSON, so they are short printable text without surrounding blanks."""
    if not isinstance(label, str) or not label:
        return "a class name must be non-empty text"
    if len(label) > MAX_LABEL:
        return f"class name {label[:20]!r}... is longer than {MAX_LABEL} characters"
    if not label.isprintable() or label.strip() != label:
        return f"class name {label!r} has control characters or surrounding blanks"
    return None


# --- layouts -------------------------------------------------------------------------

def class_files(root: Path) -> dict[str, list[Path]]:
    """Class name -> its files, for a folder with one sub-folder per class; hidden
    entries (names starting with '.') are left out."""
    if not root.is_dir():
        raise BadData(root, "does not exist" if not root.exists() else "not a folder")
    classes: dict[str, list[Path]] = {}
    for entry in _visible(root):
        if not entry.is_dir():
            raise BadData(entry, "a file beside the class folders: put each class's "
                          "examples in a sub-folder named after the class")
        if problem := label_problem(entry.name):
            raise BadData(entry, problem)
        files = _visible(entry)
        for file in files:
            if not file.is_file():
                raise BadData(file, "a folder inside a class folder: a class's examples "
                              "are files directly in its folder")
        if not files:
            raise BadData(entry, "empty class folder: it holds no examples")
        classes[entry.name] = files
    _check_class_count(root, list(classes))
    return classes


def _visible(folder: Path) -> list[Path]:
    found = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink():
            raise BadData(entry, "a symbolic link: data must be regular files and folders")
        found.append(entry)
    return found


def _check_class_count(where: Path | str, classes: list[str]) -> None:
    if not classes:
        raise BadData(where, "no classes: expected one sub-folder per class")
    if len(classes) == 1:
        raise BadData(where, f"only one class ({classes[0]!r}): a classifier needs at "
                      "least two")
    if len(classes) > MAX_CLASSES:
        raise BadData(where, f"{len(classes)} classes; at most {MAX_CLASSES} are supported")


def detect(path: Path) -> str:
    """Which layout `path` holds: images, text or csv."""
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise BadData(path, "expected a .csv file or a folder with one sub-folder per class")
    kinds: set[str] = set()
    for files in class_files(path).values():
        for file in files:
            suffix = file.suffix.lower()
            kind = ("images" if suffix in IMAGE_SUFFIXES else
                    "text" if suffix in TEXT_SUFFIXES else None)
            if kind is None:
                raise BadData(file, "not a PNG or JPEG image (.png, .jpg, .jpeg) nor a "
                              ".txt file")
            kinds.add(kind)
            if len(kinds) > 1:
                raise BadData(file, "the data mixes images and text files")
    return kinds.pop()


def read_dataset(path: Path, layout: str, spec: dict[str, Any],
                 label_column: str = "label") -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Examples (N, *input), class indices (N,) and the sorted class names.

    Examples keep their raw values (0..scale; text as byte ids): the network divides."""
    _check_layout(path, layout, spec)
    if layout == "csv":
        return _read_csv(path, spec, label_column)
    classes = class_files(path)
    names = tuple(sorted(classes))
    examples, targets = [], []
    for index, name in enumerate(names):
        for file in classes[name]:
            examples.append(read_example(file, spec))
            targets.append(index)
    return np.stack(examples), np.asarray(targets, dtype=np.int64), names


def _check_layout(path: Path, layout: str, spec: dict[str, Any]) -> None:
    takes = {"image": ("images", "csv"), "features": ("csv",), "text": ("text",)}
    if layout not in takes.get(spec["kind"], ()):
        what = {"image": "images (or a CSV of pixel values)", "features": "a CSV of features",
                "text": "text files"}[spec["kind"]]
        raise BadData(path, f"holds {layout}, but the network takes {what}")


def read_example(path: Path, spec: dict[str, Any]) -> np.ndarray:
    """One file as one input: (C, H, W) float32 for images, (length,) int64 for text."""
    if spec["kind"] == "text":
        return _read_text(path, spec["length"])
    if spec["kind"] != "image":
        raise BadData(path, "this network takes a row of features, not a file")
    return _read_image(path, tuple(spec["shape"]), float(spec["scale"]))


# --- images --------------------------------------------------------------------------

def _read_image(path: Path, shape: tuple[int, ...], scale: float) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    channels, height, width = shape
    try:
        with Image.open(path) as image:
            if image.format not in ("PNG", "JPEG"):
                raise BadData(path, f"a {image.format} image; expected PNG or JPEG")
            if image.width * image.height > MAX_PIXELS:
                raise BadData(path, f"{image.width}x{image.height} pixels is too large")
            rgba = image.convert("RGBA")  # decodes the whole file: a broken one fails here
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise BadData(path, f"not a readable PNG or JPEG image ({e})") from e
    ground = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent = white paper
    flat = Image.alpha_composite(ground, rgba).convert("L" if channels == 1 else "RGB")
    pixels = np.asarray(flat, dtype=np.float64) / 255.0  # (h, w) or (h, w, 3), in [0, 1]
    pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)  # (C, h, w)
    if channels == 1 and _border(pixels[0]).mean() > 0.5:
        pixels = 1.0 - pixels  # dark ink on light paper -> bright ink on a dark ground
    if channels == 1:
        pixels = _paper_to_zero(pixels)
    square = _pad_square(pixels)  # (C, s, s)
    rows = _area_weights(square.shape[1], height)  # (H, s)
    cols = _area_weights(square.shape[2], width)  # (W, s)
    resized = np.einsum("hs,cst,wt->chw", rows, square, cols)  # (C, H, W)
    return (resized * scale).astype(np.float32)


def _border(grey: np.ndarray) -> np.ndarray:
    return np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])


def _paper_to_zero(pixels: np.ndarray) -> np.ndarray:
    """Grey or tinted paper becomes the dark ground that white paper gives: the paper's
    level (the median of the border, where a drawing rarely reaches) goes to 0, full ink
    stays 1. Without it, a scan of grey paper or the margin of a photo reaches the network
    as a grey veil its training never showed it, and the square padding around it as a
    black frame. White paper (a level of 0) is left exactly as it was."""
    level = float(np.median(_border(pixels[0])))
    if level <= 0.0:
        return pixels
    return np.clip((pixels - level) / (1.0 - level), 0.0, 1.0)


def _pad_square(pixels: np.ndarray) -> np.ndarray:
    """Centre the picture on a square of background (0 after any inversion)."""
    _, h, w = pixels.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square = np.zeros((pixels.shape[0], side, side))
    square[:, top:top + h, left:left + w] = pixels
    return square


def _area_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in): each output pixel averages the input it covers, by overlap."""
    edges = np.linspace(0.0, size_in, size_out + 1)
    lo, hi = edges[:-1, None], edges[1:, None]  # (size_out, 1)
    j = np.arange(size_in)[None, :]  # (1, size_in)
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / (hi - lo)


# --- text ----------------------------------------------------------------------------

def _read_text(path: Path, length: int) -> np.ndarray:
    try:
        data = path.read_bytes()
        data.decode("utf-8")
    except OSError as e:
        raise BadData(path, f"cannot be read ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise BadData(path, f"not UTF-8 text (byte {e.start})") from e
    if not data.strip():
        raise BadData(path, "empty text file")
    ids = np.zeros(length, dtype=np.int64)  # 0 pads
    cut = np.frombuffer(data[:length], dtype=np.uint8)
    ids[:len(cut)] = cut.astype(np.int64) + 1
    return ids


# --- CSV -----------------------------------------------------------------------------

def _read_csv(path: Path, spec: dict[str, Any],
              label_column: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    rows = _csv_rows(path)
    header, body = rows[0], rows[1:]
    if label_column not in header:
        raise BadData(path, f"no column named {label_column!r} (the header has "
                      f"{', '.join(map(repr, header[:8]))}{', ...' if len(header) > 8 else ''})")
    if header.count(label_column) > 1:
        raise BadData(path, f"the column {label_column!r} appears twice")
    at = header.index(label_column)
    shape = tuple(spec["shape"])
    wanted = math.prod(shape)
    if len(header) - 1 != wanted:
        raise BadData(path, f"{len(header) - 1} feature columns; the network takes {wanted} "
                      f"values ({'x'.join(map(str, shape))}) besides the label")
    if not body:
        raise BadData(path, "no examples below the header")
    values = np.empty((len(body), wanted), dtype=np.float32)
    labels = []
    for n, row in enumerate(body):
        line = n + 2
        if len(row) != len(header):
            raise BadData(path, f"line {line}: {len(row)} fields, the header has {len(header)}")
        label = row[at]
        if problem := label_problem(label):
            raise BadData(path, f"line {line}: column {label_column!r}: {problem}")
        labels.append(label)
        values[n] = _numbers(path, line, row[:at] + row[at + 1:], float(spec["scale"]))
    names = tuple(sorted(set(labels)))
    _check_class_count(path, list(names))
    index = {name: i for i, name in enumerate(names)}
    return (values.reshape(len(body), *shape), np.asarray([index[x] for x in labels],
                                                           dtype=np.int64), names)


def _csv_rows(path: Path) -> list[list[str]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise BadData(path, f"cannot be read ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise BadData(path, f"not UTF-8 text (byte {e.start})") from e
    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline="")) if any(
            cell.strip() for cell in row)]
    except csv.Error as e:
        raise BadData(path, f"not a readable CSV file ({e})") from e
    if not rows:
        raise BadData(path, "empty: expected a header row, then one row per example")
    if len(rows) > MAX_ROWS + 1:
        raise BadData(path, f"more than {MAX_ROWS} rows")
    return rows


def _numbers(path: Path, line: int, cells: list[str], scale: float) -> list[float]:
    out = []
    for i, cell in enumerate(cells):
        try:
            value = float(cell)
        except ValueError:
            raise BadData(path, f"line {line}: {cell[:20]!r} is not a number") from None
        if not math.isfinite(value) or not 0.0 <= value <= scale:
            raise BadData(path, f"line {line}: value {cell[:20]!r} (feature {i + 1}) is "
                          f"outside 0..{scale:g}, the range the network takes")
        out.append(value)
    return out


# --- splitting -----------------------------------------------------------------------

def split(targets: np.ndarray, seed: int, held_out: float) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out indices, class by class, so that every class is in both (when
    it has two examples or more); depends only on `seed` and the targets."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    held: list[int] = []
    for c in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == c))
        k = min(math.floor(len(members) * held_out + 0.5), len(members) - 1)
        held.extend(members[:k].tolist())
        train.extend(members[k:].tolist())
    return np.asarray(sorted(train), dtype=np.int64), np.asarray(sorted(held), dtype=np.int64)
