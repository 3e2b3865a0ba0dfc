"""vggfeat.data.digits: scikit-learn's digits written as a real image-folder dataset."""
import json

import numpy as np
import pytest
from PIL import Image

import vggfeat.data.digits as digits_module
from vggfeat.data.digits import (
    CLUTTER,
    MANIFEST,
    load_digit_arrays,
    make_digits,
    parse_digits,
    render,
    render_cluttered,
    split_indices,
)
from vggfeat.data.readers import open_dataset
from vggfeat.training.data import scan_image_folder


def files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_parse_digits():
    assert parse_digits("0-4") == (0, 1, 2, 3, 4)
    assert parse_digits("5, 7,9") == (5, 7, 9)
    assert parse_digits("0-2,8,1") == (0, 1, 2, 8)
    for bad in ("", "a", "3-1", "0-10", "-1"):
        with pytest.raises(ValueError):
            parse_digits(bad)


def test_render_upscales_ink_dark_on_white():
    image = np.zeros((8, 8))
    image[:, 3:5] = 16.0  # a vertical stroke of full ink
    img = render(image, 32)
    assert img.size == (32, 32) and img.mode == "L"
    pixels = np.asarray(img)
    assert pixels[:, :4].min() == 255  # paper stays white away from the stroke
    assert pixels[4:28, 15:17].max() < 10  # ink is dark at the stroke's centre


def test_transfer_layout_is_what_trainer_and_reader_read(tmp_path):
    layout = make_digits(tmp_path / "d", per_class=10, val_fraction=0.2, seed=3)
    train, val = scan_image_folder(layout.path("backbone"))
    assert train.classes == val.classes == ("0", "1", "2", "3", "4")
    assert len(train.samples) == 5 * 8 and len(val.samples) == 5 * 2
    reader = open_dataset("folder", layout.path("transfer"))
    assert reader.classes == ("5", "6", "7", "8", "9")
    assert len(reader.images()) == 50
    # Every file traces back to its row of load_digits, with the right label and pixels.
    images, labels = load_digit_arrays()
    for sample in reader.images()[::7]:
        digit, index = sample.path.stem.split("_")
        assert labels[int(index)] == int(digit) == int(sample.id.split("/")[0])
        expected = np.asarray(render(images[int(index)], 32))
        assert np.array_equal(np.asarray(Image.open(sample.path)), expected)
    manifest = json.loads((tmp_path / "d" / MANIFEST).read_text())
    assert manifest["counts"]["transfer"] == {str(d): 10 for d in range(5, 10)}


def test_backbone_and_transfer_images_are_disjoint_and_val_is_disjoint_from_train(tmp_path):
    layout = make_digits(tmp_path / "d", seed=0)
    stems = {part: {p.stem.split("_")[1] for p in layout.path(part).rglob("*.png")}
             for part in ("backbone_train", "backbone_val", "transfer")}
    assert not stems["backbone_train"] & stems["backbone_val"]
    assert not (stems["backbone_train"] | stems["backbone_val"]) & stems["transfer"]
    # All 1,797 images are written once: the backbone gets digits 0-4, transfer 5-9.
    assert sum(len(s) for s in stems.values()) == 1797
    _, labels = load_digit_arrays()
    assert len(stems["transfer"]) == int((labels >= 5).sum())


def test_same_seed_same_bytes_other_seed_other_split(tmp_path):
    a = make_digits(tmp_path / "a", per_class=6, seed=1, fmt="jpeg")
    b = make_digits(tmp_path / "b", per_class=6, seed=1, fmt="jpeg")
    c = make_digits(tmp_path / "c", per_class=6, seed=2, fmt="jpeg")
    assert files(a.root) == files(b.root) != files(c.root)
    for name in files(a.root):
        if name != MANIFEST:
            assert (a.root / name).read_bytes() == (b.root / name).read_bytes()
    assert all(name.endswith((".jpg", ".json")) for name in files(a.root))


def test_split_indices_per_class_does_not_depend_on_other_digits():
    _, labels = load_digit_arrays()
    alone, _ = split_indices(labels, (7,), val_fraction=0.0, per_class=5, seed=0)
    together, _ = split_indices(labels, (5, 7, 9), val_fraction=0.0, per_class=5, seed=0)
    assert set(alone) <= set(together) and len(together) == 15


def test_split_none_writes_one_folder_of_the_chosen_digits(tmp_path):
    layout = make_digits(tmp_path / "d", split="none", digits="1,3", per_class=4, size=16)
    reader = open_dataset("folder", layout.path("all"))
    assert reader.classes == ("1", "3") and len(reader.images()) == 8
    assert Image.open(reader.images()[0].path).size == (16, 16)


def test_refuses_foreign_or_existing_output_and_keeps_it(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        make_digits(foreign, per_class=2)
    assert (foreign / "notes.txt").read_text() == "keep me"
    make_digits(tmp_path / "d", per_class=2)
    with pytest.raises(ValueError, match="--overwrite"):
        make_digits(tmp_path / "d", per_class=2)
    layout = make_digits(tmp_path / "d", per_class=3, overwrite=True)
    assert layout.counts["transfer"]["5"] == 3


@pytest.mark.parametrize("kwargs, message", [
    ({"backbone_digits": "0-5"}, "overlap"),
    ({"size": 4}, "smaller"),
    ({"fmt": "gif"}, "format"),
    ({"split": "halves"}, "split"),
    ({"val_fraction": 0.0}, "val_fraction"),
    ({"transfer_digits": "9"}, "at least two"),
    ({"clutter": True, "size": 16}, "too small for a cluttered canvas"),
])
def test_bad_options_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_digits(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


# -- the cluttered canvas (the demo's task) ----------------------------------------------

BLANK, SOLID = np.zeros((8, 8)), np.full((8, 8), 16.0)


def dark_box(pixels, below):
    """(height, width, top, left) of the pixels darker than `below`."""
    rows, cols = np.nonzero(pixels < below)
    return (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1, rows.min(), cols.min())


def test_cluttered_canvas_is_noise_fragments_and_one_whole_digit():
    noise_floor = 255 * (1 - CLUTTER["noise"]) - 1
    fragment_gray = 255 * (1 - CLUTTER["fragment_ink"])
    # Blank digit, blank fragments: only the noise, which covers the whole range it should.
    pixels = np.asarray(render_cluttered(np.stack([BLANK, BLANK]), 0, np.array([0, 1]), 64, 0))
    assert pixels.shape == (64, 64) and pixels.min() >= noise_floor and pixels.max() == 255
    assert pixels.std() > 10
    # Solid fragments only: faded ink, never as dark as a digit, and less than two whole
    # squares of it (each fragment is at most half a digit).
    pixels = np.asarray(render_cluttered(np.stack([BLANK, SOLID]), 0, np.array([0, 1]), 64, 0))
    assert fragment_gray - 2 <= pixels.min() < noise_floor
    assert (pixels < noise_floor).sum() <= 2 * (0.625 * 64) ** 2 / 2
    # A solid digit, blank fragments: one fully inked square, whole, inside the canvas, its
    # side within the drawn range; other seeds place it elsewhere and at other sizes.
    lo, hi = (share * 64 for share in CLUTTER["side"])
    boxes = set()
    for seed in range(6):
        pixels = np.asarray(render_cluttered(np.stack([SOLID, BLANK]), 0, np.array([0, 1]), 64,
                                             seed))
        height, width, top, left = dark_box(pixels, 20)
        assert height == width and lo - 1 <= height <= hi + 1
        assert pixels[top + 2:top + height - 2, left + 2:left + width - 2].max() < 20
        boxes.add((height, top, left))
    assert len(boxes) == 6


def test_cluttered_digits_deterministic_and_independent_of_the_others(tmp_path):
    a = make_digits(tmp_path / "a", per_class=4, size=48, clutter=True, seed=5)
    b = make_digits(tmp_path / "b", per_class=4, size=48, clutter=True, seed=5)
    c = make_digits(tmp_path / "c", per_class=8, size=48, clutter=True, seed=5)
    d = make_digits(tmp_path / "d", per_class=4, size=48, clutter=True, seed=6)
    for name in files(a.root):
        if name != MANIFEST:
            assert (a.root / name).read_bytes() == (b.root / name).read_bytes()
    # Each canvas depends on the seed and its image alone, not on which others are written
    # (here 8 per digit instead of 4, so some change folder between train and val).
    by_name = {p.name: p.read_bytes() for p in c.root.rglob("*.png")}
    assert all(by_name[p.name] == p.read_bytes() for p in a.root.rglob("*.png"))
    shared = sorted(set(files(a.root)) & set(files(d.root)) - {MANIFEST})
    assert all((a.root / n).read_bytes() != (d.root / n).read_bytes() for n in shared)
    # The layout is the one the trainer and the reader read, at the canvas size.
    train, _ = scan_image_folder(a.path("backbone"))
    assert train.classes == ("0", "1", "2", "3", "4")
    reader = open_dataset("folder", a.path("transfer"))
    assert Image.open(reader.images()[0].path).size == (48, 48)
    manifest = json.loads((a.root / MANIFEST).read_text())
    assert manifest["options"]["clutter"] == json.loads(json.dumps(CLUTTER))
    plain = make_digits(tmp_path / "plain", per_class=2)
    assert json.loads((plain.root / MANIFEST).read_text())["options"]["clutter"] is None


def test_backbone_canvases_never_show_pieces_of_transfer_digits(tmp_path, monkeypatch):
    pools = {}
    real = digits_module.render_cluttered

    def recording(images, index, pool, size, seed):
        pools[index] = set(pool.tolist())
        return real(images, index, pool, size, seed)

    monkeypatch.setattr(digits_module, "render_cluttered", recording)
    layout = make_digits(tmp_path / "d", per_class=3, size=32, clutter=True)
    _, labels = load_digit_arrays()
    source = {int(i) for i in np.flatnonzero(labels <= 4)}
    for part, digits in (("backbone_train", source), ("transfer", None)):
        for path in layout.path(part).rglob("*.png"):
            index = int(path.stem.split("_")[1])
            expected = digits if digits is not None else set(range(len(labels))) - source
            assert pools[index] == expected
