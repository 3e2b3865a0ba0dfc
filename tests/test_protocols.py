"""Protocols end to end on generated dataset layouts, with descriptors made from the labels
(separable), or independent of them (chance)."""
from pathlib import Path

import numpy as np
import pytest
from helpers_datasets import (
    class_descriptors,
    make_caltech,
    make_csv_dataset,
    make_folder_dataset,
    make_voc,
    make_voc_action,
)

from vggfeat.data.readers import open_dataset
from vggfeat.evaluation import protocols
from vggfeat.evaluation.inputs import EvaluationInputError, Features
from vggfeat.evaluation.metrics import voc_ap
from vggfeat.evaluation.protocols import Settings, draw_splits, read_splits, run_protocol
from vggfeat.evaluation.svm import LinearSVMProbe

FAST = Settings(C=(0.1, 1.0, 10.0), verbose=False)
FASTER = Settings(C=(0.1, 1.0), cv=2, verbose=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _features(ids, y, noise=0.3, seed=0, shuffle=False, dim=48):
    """Descriptors aligned with `ids`: from the labels `y`, or (shuffle) from a random
    permutation of them, i.e. independent of the true labels."""
    y = np.asarray(y)
    if shuffle:
        y = y[np.random.default_rng(seed + 1).permutation(len(y))]
    x = class_descriptors(np.where(y == 0, 1, y), dim=dim, noise=noise, seed=seed)[:, 0]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return Features(list(ids), x, [Path("generated")])


@pytest.fixture(scope="module")
def voc07(tmp_path_factory):
    data = make_voc(tmp_path_factory.mktemp("voc07"), "2007", {"train": 40, "val": 40, "test": 60})
    reader = open_dataset("voc2007", data.root)
    ids = data.ids["trainval"] + data.ids["test"]
    y = np.concatenate([data.labels["trainval"], data.labels["test"]])
    return data, reader, ids, y


def _ap(result, cls, key="ap_voc10"):
    return next(r[key] for r in result.rows if r["class"] == cls)


def test_voc07_separable_gives_map_near_one_and_shuffled_gives_chance(voc07):
    _, reader, ids, y = voc07
    good = run_protocol(reader, _features(ids, y), FAST)
    assert good.headline["headline"] == "mAP_voc07"
    assert good.headline["mAP_voc07"] > 0.95 and good.headline["mAP_voc10"] > 0.95
    assert len(good.rows) == 20 and set(good.chosen_C["test"]) == set(reader.classes)
    chance = run_protocol(reader, _features(ids, y, shuffle=True), FAST)
    # About 1 in 15 test images is positive for a class: chance AP is far below 0.5.
    assert chance.headline["mAP_voc10"] < 0.4
    assert {r["id"] for r in good.scores} == set(reader.split_ids("test"))


def test_voc_difficult_images_never_change_the_score(voc07):
    _, reader, ids, y = voc07
    features = _features(ids, y)
    base = run_protocol(reader, features, FASTER)
    # Pick the class with most difficult images; redraw those images' descriptors.
    k = int(np.argmax((y == 0).sum(axis=0)))
    difficult = np.flatnonzero(y[:, k] == 0)
    assert len(difficult) >= 2
    changed = Features(features.ids, features.X.copy(), features.sources)
    changed.X[difficult] = np.random.default_rng(9).random((len(difficult), changed.X.shape[1]))
    other = run_protocol(reader, changed, FASTER)
    name = reader.classes[k]
    assert other.chosen_C["test"][name] == base.chosen_C["test"][name]
    for key in ("ap_voc07", "ap_voc10"):
        assert _ap(other, name, key) == pytest.approx(_ap(base, name, key), abs=1e-6)
    # Trained with difficult images as positives, they are still left out of scoring.
    as_positive = run_protocol(reader, features, Settings(C=(1.0,), difficult="positive"))
    test_ids = reader.split_ids("test")
    scores = {r["id"]: r[name] for r in as_positive.scores}
    expected = voc_ap([scores[i] for i in test_ids], reader.labels("test").y[:, k])
    assert _ap(as_positive, name) == pytest.approx(expected)
    assert (reader.labels("test").y[:, k] == 0).any()


def test_test_data_never_influences_the_choice_of_C(voc07):
    _, reader, ids, y = voc07
    features = _features(ids, y, noise=1.0)
    base = run_protocol(reader, features, FASTER)
    test_rows = [i for i, sample in enumerate(ids) if sample in set(reader.split_ids("test"))]
    changed = Features(features.ids, features.X.copy(), features.sources)
    changed.X[test_rows] = changed.X[test_rows][::-1]
    assert run_protocol(reader, changed, FASTER).chosen_C == base.chosen_C


def test_missing_ids_fail_before_fitting(voc07, monkeypatch):
    _, reader, ids, y = voc07
    features = _features(ids, y)
    fits = []
    original = LinearSVMProbe.fit
    monkeypatch.setattr(LinearSVMProbe, "fit",
                        lambda self, X, y: fits.append(1) or original(self, X, y))
    last_test = reader.split_ids("test")[-1]
    keep = [i for i, sample in enumerate(ids) if sample != last_test]
    partial = Features([ids[i] for i in keep], features.X[keep], [Path("cache.h5")])
    with pytest.raises(EvaluationInputError, match=rf"1 image id.*test.*cache.h5.*{last_test}"):
        run_protocol(reader, partial, FAST)
    assert fits == []


def test_class_without_positive_training_example_fails(tmp_path):
    data = make_voc(tmp_path, "2007", {"train": 20, "val": 20, "test": 20})
    path = tmp_path / "VOCdevkit/VOC2007/ImageSets/Main/sofa_trainval.txt"
    path.write_text("".join(f"{i} -1\n" for i in data.ids["trainval"]))
    reader = open_dataset("voc2007", tmp_path)
    ids = data.ids["trainval"] + data.ids["test"]
    y = np.concatenate([data.labels["trainval"], data.labels["test"]])
    with pytest.raises(EvaluationInputError, match="sofa have no positive training example"):
        run_protocol(reader, _features(ids, y), FAST)


def test_voc2012_val_results_and_comp1_server_files(tmp_path):
    data = make_voc(tmp_path / "d", "2012", {"train": 40, "val": 30, "test": 12})
    reader = open_dataset("voc2012", data.root)
    ids = [s.id for s in reader.images()]
    labels = {**dict(zip(data.ids["trainval"], data.labels["trainval"], strict=True))}
    y = np.array([labels.get(i, -np.ones(20, int)) for i in ids])
    result = run_protocol(reader, _features(ids, y), FAST, out=tmp_path / "out")
    assert result.headline["headline"] == "mAP_voc10" and result.headline["mAP_voc10"] > 0.9
    files = sorted(p.name for p in result.files)
    assert files == sorted(f"comp1_cls_test_{c}.txt" for c in reader.classes)
    lines = (tmp_path / "out" / "comp1_cls_test_cat.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == data.ids["test"]
    assert all(np.isfinite(float(line.split()[1])) for line in lines)


def test_voc_action_box_features_help_and_comp9_files(tmp_path):
    data = make_voc_action(tmp_path / "d", {"train": 40, "val": 30}, with_test=True)
    reader = open_dataset("voc2012-action", data.root)
    images = [s.id for s in reader.images()]
    boxes = [b.id for b in reader.boxes()]
    box_y = {**{k: v for s in ("train", "val")
                for k, v in zip(data.ids[s], data.labels[s], strict=True)}}
    y_boxes = np.array([box_y.get(b, -np.ones(10, int)) for b in boxes])
    # Image descriptors carry no action information; box descriptors do.
    image_part = _features(images, np.ones((len(images), 10), int), noise=1.0, seed=3)
    box_part = _features(boxes, y_boxes, noise=0.2, seed=4)
    features = Features(images, image_part.X, [Path("g")], boxes, box_part.X)
    result = run_protocol(reader, features, FAST, out=tmp_path / "out")
    assert result.headline["headline"] == "mAP_voc10[image+box]"
    assert result.headline["mAP_voc10[image+box]"] > 0.9
    assert result.headline["mAP_voc10[image]"] < 0.6
    lines = (tmp_path / "out" / "comp9_action_test_jumping.txt").read_text().splitlines()
    assert [f"{a}#{b}" for a, b, _ in (line.split() for line in lines)] == data.ids["test"]
    image_only = run_protocol(reader, Features(images, image_part.X, [Path("g")]), FAST)
    assert image_only.headline["headline"] == "mAP_voc10[image]"


@pytest.fixture(scope="module")
def caltech(tmp_path_factory):
    counts = {"BACKGROUND_Google": 9, "Faces": 12, "Faces_easy": 10, "accordion": 7,
              "airplanes": 11}
    data = make_caltech(tmp_path_factory.mktemp("cal"), "101", per_class=counts)
    return data, open_dataset("caltech101", data.root), counts


def test_caltech_split_counts_determinism_and_disjointness(caltech):
    data, reader, counts = caltech
    labels = reader.labels()
    splits = draw_splits(labels, 5, 3, n_splits=3, seed=7)
    assert len(splits) == 3
    for assign in splits:
        for name, n in counts.items():
            mine = [i for i in assign if i.startswith(name + "/")]
            train = [i for i in mine if assign[i] == "train"]
            test = [i for i in mine if assign[i] == "test"]
            assert len(train) == 5 and len(test) == min(3, n - 5)
            assert not set(train) & set(test)
    assert splits == draw_splits(labels, 5, 3, n_splits=3, seed=7)
    assert splits != draw_splits(labels, 5, 3, n_splits=3, seed=8)
    assert splits[0] != splits[1]
    rest = draw_splits(labels, 5, None, n_splits=1, seed=0)[0]
    assert sum(v == "test" for v in rest.values()) == sum(n - 5 for n in counts.values())
    with pytest.raises(EvaluationInputError, match="accordion has 7 images"):
        draw_splits(labels, 7, None, n_splits=1, seed=0)


def test_caltech_end_to_end_separable_chance_and_repeatable_splits(caltech, tmp_path):
    data, reader, _ = caltech
    y = data.labels["all"]
    settings = Settings(C=(0.1, 1.0, 10.0), train_per_class=5)
    good = run_protocol(reader, _features(data.ids["all"], y), settings, out=tmp_path / "a")
    assert good.headline["mean_class_recall"] > 0.95
    assert len(good.headline["mean_class_recall_per_split"]) == 3
    assert len(good.rows) == 3 * 5
    chance = run_protocol(reader, _features(data.ids["all"], y, shuffle=True, noise=0.3),
                          settings)
    assert chance.headline["mean_class_recall"] < 0.6
    written = read_splits(tmp_path / "a" / "splits.csv", reader.labels())
    again = Settings(C=(0.1, 1.0, 10.0), splits_file=tmp_path / "a" / "splits.csv", seed=99)
    repeat = run_protocol(reader, _features(data.ids["all"], y), again)
    assert written == draw_splits(reader.labels(), 5, 50, 3, seed=0)
    assert repeat.headline == good.headline


def test_custom_folder_multiclass_and_csv_multilabel(tmp_path):
    folder = make_folder_dataset(tmp_path / "f", per_class=8)
    reader = open_dataset("folder", folder.root)
    result = run_protocol(reader, _features(folder.ids["all"], folder.labels["all"]), FAST)
    assert result.headline["headline"] == "mean_class_recall"
    assert result.headline["accuracy"] > 0.9

    split = make_folder_dataset(tmp_path / "s", per_class=6, split_dirs=True)
    reader = open_dataset("folder", split.root)
    ids = split.ids["train"] + split.ids["test"]
    y = np.concatenate([split.labels["train"], split.labels["test"]])
    result = run_protocol(reader, _features(ids, y), FAST)
    assert {r["id"] for r in result.scores} == set(split.ids["test"])
    assert len(result.headline["mean_class_recall_per_split"]) == 1

    multi = make_csv_dataset(tmp_path / "m", n_images=40, multi_label=True)
    reader = open_dataset("csv", multi.root)
    ids = multi.ids["train"] + multi.ids["test"]
    y = np.concatenate([multi.labels["train"], multi.labels["test"]])
    result = run_protocol(reader, _features(ids, y), FAST)
    assert result.headline["headline"] == "mAP_voc10" and result.headline["mAP_voc10"] > 0.9


def test_protocol_table_is_complete():
    assert set(protocols.PROTOCOLS) == {"voc2007", "voc2012", "voc2012-action", "caltech101",
                                        "caltech256", "folder", "csv"}


def test_custom_folder_takes_the_caltech_protocol_when_given_train_per_class(tmp_path):
    folder = make_folder_dataset(tmp_path / "f", per_class=8)
    reader = open_dataset("folder", folder.root)
    features = _features(folder.ids["all"], folder.labels["all"])
    settings = Settings(C=(1.0,), train_per_class=3, test_per_class=4, verbose=False)
    result = run_protocol(reader, features, settings, out=tmp_path / "out")
    assert result.protocol == "3 seeded splits, 3 train / 4 test per class"
    rows = (tmp_path / "out" / "splits.csv").read_text().splitlines()[1:]
    n_classes = len(folder.classes)
    for split in range(3):
        subsets = [r.rsplit(",", 1)[1] for r in rows if r.startswith(f"{split},")]
        assert subsets.count("train") == 3 * n_classes and subsets.count("test") == 4 * n_classes


def test_multiclass_protocols_choose_one_c_per_split_on_training_images(caltech, tmp_path):
    data, reader, _ = caltech
    y = data.labels["all"]
    settings = Settings(C=(0.01, 1.0, 100.0), train_per_class=5)
    result = run_protocol(reader, _features(data.ids["all"], y, noise=0.8), settings)
    for split, C in zip(("0", "1", "2"), result.headline["C_per_split"], strict=True):
        assert C in settings.C
        assert set(result.chosen_C[split].values()) == {C}
        assert {r["C"] for r in result.rows if str(r["split"]) == split} == {C}
    # Test images never influence the choice: scramble their descriptors, same C.
    splits = draw_splits(reader.labels(), 5, 50, 3, seed=0)
    test_ids = {i for assign in splits for i, sub in assign.items() if sub == "test"}
    features = _features(data.ids["all"], y, noise=0.8)
    scrambled = features.X.copy()
    rows = [k for k, i in enumerate(data.ids["all"]) if i in test_ids
            and all(assign.get(i) != "train" for assign in splits)]
    assert len(rows) >= 5
    scrambled[rows] = np.random.default_rng(0).permutation(scrambled[rows])
    other = run_protocol(reader, Features(features.ids, scrambled, features.sources), settings)
    assert other.chosen_C == result.chosen_C
