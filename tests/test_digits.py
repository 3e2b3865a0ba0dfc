"""vggfeat.data.digits: scikit-learn's digits written as a real image-folder dataset."""
import json

import numpy as np
import pytest
from PIL import Image

from vggfeat.data.digits import (
    MANIFEST,
    load_digit_arrays,
    make_digits,
    parse_digits,
    render,
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
])
def test_bad_options_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_digits(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()
