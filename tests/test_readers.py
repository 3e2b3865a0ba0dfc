"""Dataset readers on generated real layouts (JPEG files, VOC XML, devkit text files)."""
import shutil

import numpy as np
import pytest
from helpers_datasets import (
    make_caltech,
    make_csv_dataset,
    make_folder_dataset,
    make_voc,
    make_voc_action,
)
from PIL import Image

from vggfeat.data.readers import (
    DATASETS,
    VOC_CLASSES,
    DatasetLayoutError,
    Sample,
    open_dataset,
    parse_voc_objects,
)


def _assert_sorted_unique(samples):
    ids = [s.id for s in samples]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


@pytest.fixture(scope="module")
def voc07(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc07"), "2007")


def test_voc2007_images_and_labels_match_what_was_written(voc07):
    reader = open_dataset("voc2007", voc07.root)
    samples = reader.images()
    _assert_sorted_unique(samples)
    assert {s.id for s in samples} == set(voc07.ids["trainval"]) | set(voc07.ids["test"])
    assert all(s.path.is_file() and s.box is None for s in samples)
    assert reader.classes == VOC_CLASSES
    assert reader.splits() == ("train", "val", "trainval", "test")
    assert reader.default_scales == (256, 384, 512, 640, 768)
    for split in ("trainval", "test"):
        labels = reader.labels(split)
        assert labels.ids == voc07.ids[split]
        np.testing.assert_array_equal(labels.y, voc07.labels[split])
    assert (reader.labels("test").y == 0).any(), "generator should write difficult labels"


def test_voc_root_may_be_vocdevkit_or_year_folder(voc07):
    for root in (voc07.root / "VOCdevkit", voc07.root / "VOCdevkit" / "VOC2007"):
        assert [s.id for s in open_dataset("voc2007", root).images()] == [
            s.id for s in open_dataset("voc2007", voc07.root).images()
        ]


def test_voc_wrong_root_names_expected_path(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"VOCdevkit/VOC2007.*something/"):
        open_dataset("voc2007", tmp_path)


def test_voc_missing_class_file_and_missing_image_fail_at_open(tmp_path):
    data = make_voc(tmp_path, "2007", {"train": 4, "val": 4, "test": 4})
    main = tmp_path / "VOCdevkit/VOC2007/ImageSets/Main"
    (main / "sofa_test.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="sofa_test.txt"):
        open_dataset("voc2007", tmp_path)
    shutil.copy(main / "cat_test.txt", main / "sofa_test.txt")
    open_dataset("voc2007", tmp_path)  # complete again (labels wrong, but the layout is fine)
    missing = tmp_path / "VOCdevkit/VOC2007/JPEGImages" / f"{data.ids['test'][0]}.jpg"
    missing.unlink()
    with pytest.raises(DatasetLayoutError, match=str(missing.name)):
        open_dataset("voc2007", tmp_path)


def test_voc2012_test_split_without_labels(tmp_path):
    data = make_voc(tmp_path, "2012", {"train": 6, "val": 6, "test": 5})
    reader = open_dataset("voc2012", tmp_path)
    assert reader.splits() == ("train", "val", "trainval", "test")
    assert reader.labels("test") is None
    assert reader.split_ids("test") == data.ids["test"]
    np.testing.assert_array_equal(reader.labels("val").y, data.labels["val"])
    assert len(reader.images()) == 17


def test_voc_action_boxes_are_zero_based_exclusive(tmp_path):
    data = make_voc_action(tmp_path, {"train": 6, "val": 5}, with_test=True)
    reader = open_dataset("voc2012-action", tmp_path)
    boxes = reader.boxes()
    _assert_sorted_unique(boxes)
    assert {b.id for b in boxes} == set(data.boxes)
    for b in boxes:
        assert b.box == data.boxes[b.id]
        image_id = b.id.split("#")[0]
        assert b.path.name == f"{image_id}.jpg"
        x0, y0, x1, y1 = b.box
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 48
        # The generator painted the box in a saturated colour over a grey background.
        pixels = np.asarray(Image.open(b.path).convert("RGB"), dtype=int)
        centre = pixels[(y0 + y1 - 1) // 2, (x0 + x1 - 1) // 2]
        assert centre.max() - centre.min() > 100
    np.testing.assert_array_equal(reader.labels("train").y, data.labels["train"])
    assert reader.labels("train").ids == data.ids["train"]
    assert reader.labels("test") is None
    assert reader.split_ids("test") == data.ids["test"]
    assert {s.id for s in reader.images()} == {k.split("#")[0] for k in data.boxes}


def test_voc_xml_one_based_inclusive_box_converts(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text(
        "<annotation><object><name>person</name><bndbox><xmin>1</xmin><ymin>2</ymin>"
        "<xmax>10</xmax><ymax>20</ymax></bndbox><actions><jumping>1</jumping>"
        "<phoning>0</phoning></actions></object></annotation>"
    )
    (obj,) = parse_voc_objects(xml)
    # 1-based inclusive [1, 10] covers 10 pixels = 0-based [0, 10).
    assert obj["box"] == (0, 1, 10, 20)
    assert obj["actions"] == {"jumping": 1, "phoning": 0}


def test_voc_xml_entities_are_refused(tmp_path):
    xml = tmp_path / "bomb.xml"
    xml.write_text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "xxxxxxxx"><!ENTITY f "&e;&e;&e;">]>'
        "<annotation><object><name>&f;</name></object></annotation>"
    )
    with pytest.raises(DatasetLayoutError, match="bomb.xml"):
        parse_voc_objects(xml)


def test_caltech101_background_kept_by_default_and_strays_ignored(tmp_path):
    data = make_caltech(tmp_path, "101", per_class=3)
    reader = open_dataset("caltech101", tmp_path)
    assert reader.classes == data.classes and "BACKGROUND_Google" in reader.classes
    samples = reader.images()
    _assert_sorted_unique(samples)
    assert [s.id for s in samples] == data.ids["all"]
    assert all(s.path.suffix == ".jpg" for s in samples)
    labels = reader.labels()
    np.testing.assert_array_equal(labels.single_label(), data.single_label())
    assert reader.default_scales == (256, 384, 512) and reader.default_aggregate == "stack"
    dropped = open_dataset("caltech101", tmp_path / "101_ObjectCategories", drop_background=True)
    assert "BACKGROUND_Google" not in dropped.classes
    assert len(dropped.images()) == len(samples) - 3


def test_caltech256_glob_and_folder_names(tmp_path):
    data = make_caltech(tmp_path, "256", per_class={"001.ak47": 2, "002.american-flag": 3,
                                                    "003.backpack": 1, "257.clutter": 4})
    reader = open_dataset("caltech256", tmp_path)
    assert [s.id for s in reader.images()] == data.ids["all"]
    assert reader.classes[-1] == "257.clutter"
    (tmp_path / "256_ObjectCategories" / "badname").mkdir()
    with pytest.raises(DatasetLayoutError, match="NNN.name"):
        open_dataset("caltech256", tmp_path)


def test_caltech_wrong_root_and_empty_class(tmp_path):
    with pytest.raises(DatasetLayoutError, match="101_ObjectCategories"):
        open_dataset("caltech101", tmp_path)
    make_caltech(tmp_path, "101", per_class=2)
    (tmp_path / "101_ObjectCategories" / "emptyclass").mkdir()
    with pytest.raises(DatasetLayoutError, match="emptyclass.*no image files"):
        open_dataset("caltech101", tmp_path)


def test_folder_reader_flat_and_split_layouts(tmp_path):
    flat = make_folder_dataset(tmp_path / "flat", per_class=3)
    reader = open_dataset("folder", flat.root)
    assert [s.id for s in reader.images()] == flat.ids["all"]
    assert reader.splits() == ()
    np.testing.assert_array_equal(reader.labels().y, flat.labels["all"])

    split = make_folder_dataset(tmp_path / "split", per_class=2, split_dirs=True)
    reader = open_dataset("folder", split.root)
    assert reader.splits() == ("train", "test")
    assert reader.classes == ("cat", "dog", "fish")
    assert reader.split_ids("test") == split.ids["test"]
    np.testing.assert_array_equal(reader.labels("train").y, split.labels["train"])


def _rename_split(root, old, new):
    (root / old).rename(root / new)


def test_folder_with_train_and_val_only_is_read_as_splits_not_classes(tmp_path):
    data = make_folder_dataset(tmp_path / "imagenet_style", per_class=2, split_dirs=True)
    _rename_split(data.root, "test", "val")  # the ImageNet / train-backbone layout
    reader = open_dataset("folder", data.root)
    assert reader.classes == ("cat", "dog", "fish")  # not ("train", "val")
    assert reader.splits() == ("train", "val")
    assert len(reader.split_ids("val")) == 6 and reader.split_ids("val")[0].startswith("val/")

    _rename_split(data.root, "val", "validation")  # the other usual spelling
    assert open_dataset("folder", data.root).splits() == ("train", "val")


def test_folder_layouts_that_cannot_be_told_apart_are_refused_with_both_layouts(tmp_path):
    data = make_folder_dataset(tmp_path / "mixed", per_class=2, split_dirs=True)
    shutil.copytree(data.root / "train" / "cat", data.root / "bird")  # a stray class folder
    with pytest.raises(DatasetLayoutError) as error:
        open_dataset("folder", data.root)
    message = str(error.value)
    assert "mixes split folders (test, train) with other folders (bird)" in message
    assert "ROOT/<class>/<images>" in message and "ROOT/train/<class>/<images>" in message

    only_train = make_folder_dataset(tmp_path / "only", per_class=2, split_dirs=True)
    shutil.rmtree(only_train.root / "test")
    with pytest.raises(DatasetLayoutError, match="lack train/ and a held-out val/ or test/"):
        open_dataset("folder", only_train.root)


def test_a_class_called_train_stays_a_class(tmp_path):
    data = make_folder_dataset(tmp_path / "vehicles", classes=("bus", "car", "train"),
                               per_class=2)
    reader = open_dataset("folder", data.root)  # train/ holds images, so it is a class
    assert reader.classes == ("bus", "car", "train") and reader.splits() == ()


def test_csv_reader_single_and_multi_label(tmp_path):
    single = make_csv_dataset(tmp_path / "s", n_images=12)
    reader = open_dataset("csv", single.root / "labels.csv")
    assert not reader.multi_label
    assert reader.splits() == ("train", "test")
    np.testing.assert_array_equal(reader.labels("test").y, single.labels["test"])
    assert reader.labels("test").ids == single.ids["test"]

    multi = make_csv_dataset(tmp_path / "m", n_images=12, multi_label=True, with_split=False)
    reader = open_dataset("csv", multi.root)  # a folder holding labels.csv
    assert reader.multi_label and reader.splits() == ()
    np.testing.assert_array_equal(reader.labels().y, multi.labels["all"])


def test_csv_repeated_rows_give_multi_label_and_errors_name_line(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text("path,label\na.jpg,cat\na.jpg,dog\nb.jpg,dog\n")
    reader = open_dataset("csv", tmp_path)
    assert reader.multi_label
    np.testing.assert_array_equal(reader.labels().y, [[1, 1], [-1, 1]])
    (tmp_path / "labels.csv").write_text("path,label\na.jpg,cat\nmissing.jpg,dog\n")
    with pytest.raises(DatasetLayoutError, match="line 3.*missing.jpg"):
        open_dataset("csv", tmp_path)
    (tmp_path / "labels.csv").write_text("file,label\na.jpg,cat\n")
    with pytest.raises(DatasetLayoutError, match="path,label"):
        open_dataset("csv", tmp_path)


def _spreadsheet_csv(path, rows) -> None:
    """`rows` as a spreadsheet's "CSV UTF-8": a byte-order mark, CRLF line ends, and
    fields with commas or spaces quoted."""
    import csv
    import io

    text = io.StringIO(newline="")
    csv.writer(text, lineterminator="\r\n").writerows(rows)
    path.write_bytes(b"\xef\xbb\xbf" + text.getvalue().encode("utf-8"))


def test_a_spreadsheet_csv_with_bom_crlf_and_commas_in_paths_is_read(tmp_path):
    names = ["pets, 2024/cat one.jpg", "pets, 2024/dog, big.jpg", "café plain.jpg"]
    for k, name in enumerate(names):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (40 * k, 0, 0)).save(tmp_path / name)
    _spreadsheet_csv(tmp_path / "labels.csv", [["path", "label", "split"],
                                               [names[0], "cat", "train"],
                                               [names[1], "dog", "train"],
                                               [names[2], "cat", "test"]])
    assert (tmp_path / "labels.csv").read_bytes().startswith(b"\xef\xbb\xbfpath,")
    assert b'"pets, 2024/dog, big.jpg",dog,train\r\n' in (tmp_path / "labels.csv").read_bytes()
    reader = open_dataset("csv", tmp_path)
    assert [s.id for s in reader.images()] == sorted(names)
    assert all(s.path.is_file() for s in reader.images())
    assert reader.classes == ("cat", "dog") and reader.splits() == ("train", "test")
    assert reader.labels("test").ids == [names[2]]


def test_a_csv_that_is_not_utf8_is_refused_naming_it(tmp_path):
    from vggfeat.utils.errors import InputError

    (tmp_path / "labels.csv").write_bytes("path,label\ncaf\u00e9.jpg,cat\n".encode("latin-1"))
    with pytest.raises(InputError, match="labels.csv: not UTF-8.*CSV UTF-8"):
        open_dataset("csv", tmp_path)


def test_a_spreadsheet_csv_of_localisation_boxes_is_read(tmp_path):
    from vggfeat.data.readers.ilsvrc import read_localisation

    for name in ("a, 1.jpg", "b.jpg"):
        Image.new("RGB", (20, 20)).save(tmp_path / name)
    _spreadsheet_csv(tmp_path / "boxes.csv",
                     [["path", "label", "xmin", "ymin", "xmax", "ymax", "split"],
                      ["a, 1.jpg", "cat", "1", "2", "10", "12", "train"],
                      ["b.jpg", "dog", "0", "0", "5.5", "6", "train"]])
    boxes = read_localisation(tmp_path / "boxes.csv", "train")
    assert boxes.paths == ("a, 1.jpg", "b.jpg") and boxes.classes == ("cat", "dog")
    np.testing.assert_array_equal(boxes.boxes[1], [[0, 0, 5.5, 6]])


def test_a_spreadsheet_splits_file_is_read(tmp_path):
    from vggfeat.data.readers import Labels
    from vggfeat.evaluation.protocols.splits import read_splits

    labels = Labels(["a, 1.jpg", "b.jpg"], ("cat", "dog"), np.array([[1, -1], [-1, 1]]))
    _spreadsheet_csv(tmp_path / "splits.csv", [["split", "id", "class", "subset"],
                                               ["0", "a, 1.jpg", "cat", "train"],
                                               ["0", "b.jpg", "dog", "test"]])
    assert read_splits(tmp_path / "splits.csv", labels) == [{"a, 1.jpg": "train",
                                                              "b.jpg": "test"}]


def test_open_dataset_rejects_unknown_names_and_options(tmp_path):
    assert len(DATASETS) == 7
    with pytest.raises(ValueError, match="voc2007"):
        open_dataset("imagenet", tmp_path)
    make_caltech(tmp_path, "256", per_class=1)
    with pytest.raises(ValueError, match="drop_background"):
        open_dataset("caltech256", tmp_path, drop_background=True)


def test_sample_is_frozen(tmp_path):
    sample = Sample("a", tmp_path / "a.jpg")
    with pytest.raises(AttributeError):
        sample.id = "b"


def test_the_trainer_scans_class_folders_as_the_folder_reader_does(tmp_path):
    from vggfeat.training.data import scan_split

    data = make_folder_dataset(tmp_path / "d", per_class=2)
    first = next((data.root / "cat").iterdir())
    shutil.copy(first, data.root / "cat" / ".hidden.jpg")  # skipped by both
    Image.new("RGB", (8, 8)).save(data.root / "dog" / "x.gif")  # read by both
    reader = open_dataset("folder", data.root)
    images = scan_split(data.root)
    assert images.classes == reader.classes
    assert [rel for rel, _ in images.samples] == [s.id for s in reader.images()]
    assert "dog/x.gif" in dict(images.samples)
