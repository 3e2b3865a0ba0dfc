"""Generators of small but real dataset layouts, shared by the data, features and demo tests.

Everything written is what the real datasets contain: JPEG files (via PIL), VOC XML
annotations, ImageSets text files in the devkit's format, Caltech class folders with the
real naming and a few stray non-image entries. Each image shows one coloured rectangle per
object, the colour fixed by the class, so even a tiny network can tell classes apart.

Each ``make_*`` returns a `GeneratedDataset` with the ground truth that was written, so a
test can compare a reader's output with it. ``write_feature_cache`` writes an HDF5 file that
follows the feature cache contract (issue 3), for tests that need descriptors without
running a network.
"""
from __future__ import annotations

import colorsys
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vggfeat.data.readers import VOC_ACTIONS, VOC_CLASSES, open_dataset

CALTECH101_CLASSES = ("BACKGROUND_Google", "Faces", "Faces_easy", "accordion", "airplanes")
CALTECH256_CLASSES = ("001.ak47", "002.american-flag", "003.backpack", "257.clutter")


@dataclass
class GeneratedDataset:
    """What a generator wrote.

    ``root`` is what to pass to ``open_dataset``; ``ids[split]`` the sample ids of a split
    (``"all"`` for data without splits); ``labels[split]`` an ``(n, n_classes)`` int8 matrix
    in {1, 0, -1} aligned with ``ids[split]``; ``boxes`` maps action box ids to their 0-based
    exclusive-end boxes.
    """

    root: Path
    classes: tuple[str, ...]
    ids: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    boxes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)

    def single_label(self, split: str = "all") -> np.ndarray:
        return np.argmax(self.labels[split] == 1, axis=1)


def class_colour(index: int, n: int) -> tuple[int, int, int]:
    """A distinct saturated colour for class `index` of `n`."""
    r, g, b = colorsys.hsv_to_rgb(index / max(n, 1), 0.9, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def write_image(path: Path, size=(64, 48), rects=(), seed: int = 0, quality: int = 90) -> None:
    """Write a JPEG with a noisy grey background and filled rectangles.

    ``rects``: ``((x0, y0, x1, y1), (r, g, b))`` pairs, 0-based, exclusive end.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = rng.integers(90, 140, size=(h, w, 3), dtype=np.uint8)
    for (x0, y0, x1, y1), colour in rects:
        pixels[y0:y1, x0:x1] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=quality)


def _random_box(rng, size, min_side=8) -> tuple[int, int, int, int]:
    w, h = size
    bw, bh = rng.integers(min_side, w // 2 + 1), rng.integers(min_side, h // 2 + 1)
    x0, y0 = rng.integers(0, w - bw + 1), rng.integers(0, h - bh + 1)
    return int(x0), int(y0), int(x0 + bw), int(y0 + bh)


def _voc_xml(image_id: str, size, objects) -> str:
    """VOC annotation XML; ``objects``: dicts with name, box (0-based), difficult, actions."""
    w, h = size
    parts = [
        "<annotation>", "\t<folder>VOC</folder>", f"\t<filename>{image_id}.jpg</filename>",
        f"\t<size><width>{w}</width><height>{h}</height><depth>3</depth></size>",
        "\t<segmented>0</segmented>",
    ]
    for obj in objects:
        x0, y0, x1, y1 = obj["box"]
        difficult = int(obj.get("difficult", 0))
        parts += ["\t<object>", f"\t\t<name>{obj['name']}</name>", "\t\t<pose>Unspecified</pose>",
                  "\t\t<truncated>0</truncated>", f"\t\t<difficult>{difficult}</difficult>"]
        if "actions" in obj:
            parts.append("\t\t<actions>")
            parts += [f"\t\t\t<{a}>{v}</{a}>" for a, v in obj["actions"].items()]
            parts.append("\t\t</actions>")
        # The devkit's boxes are 1-based with inclusive end.
        parts += ["\t\t<bndbox>", f"\t\t\t<xmin>{x0 + 1}</xmin>", f"\t\t\t<ymin>{y0 + 1}</ymin>",
                  f"\t\t\t<xmax>{x1}</xmax>", f"\t\t\t<ymax>{y1}</ymax>", "\t\t</bndbox>",
                  "\t</object>"]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def _write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def make_voc(root, year: str = "2007", n_per_split: dict | None = None, seed: int = 0,
             difficult_frac: float = 0.15, second_frac: float = 0.3, size=(64, 48),
             with_test: bool = True) -> GeneratedDataset:
    """A PASCAL VOC classification devkit under ``root/VOCdevkit/VOC<year>``.

    Every image has one main class (cycled, so every class has positives in every split),
    sometimes a second positive class, and sometimes a difficult-only class (label 0).
    VOC 2007 writes labelled train/val/trainval/test; VOC 2012 writes labelled
    train/val/trainval and, with ``with_test``, an unlabelled ``test.txt`` as the server's
    test set has.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    n_per_split = n_per_split or {"train": 30, "val": 30, "test": 40}
    voc = root / "VOCdevkit" / f"VOC{year}"
    classes = VOC_CLASSES
    out = GeneratedDataset(root=root, classes=classes)
    counter = 0
    for split, n in n_per_split.items():
        ids, rows = [], []
        for _ in range(n):
            counter += 1
            image_id = f"{counter:06d}" if year == "2007" else f"2008_{counter:06d}"
            y = -np.ones(len(classes), dtype=np.int8)
            objects = []
            main = counter % len(classes)
            y[main] = 1
            objects.append({"name": classes[main], "box": _random_box(rng, size)})
            if rng.random() < second_frac:
                k = int(rng.integers(len(classes)))
                y[k] = 1
                objects.append({"name": classes[k], "box": _random_box(rng, size)})
            if rng.random() < difficult_frac:
                k = int(rng.integers(len(classes)))
                if y[k] == -1:
                    y[k] = 0
                    objects.append({"name": classes[k], "box": _random_box(rng, size),
                                    "difficult": 1})
            rects = [(o["box"], class_colour(classes.index(o["name"]), len(classes)))
                     for o in objects]
            write_image(voc / "JPEGImages" / f"{image_id}.jpg", size, rects, seed=counter)
            (voc / "Annotations").mkdir(parents=True, exist_ok=True)
            (voc / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(image_id, size, objects))
            ids.append(image_id)
            rows.append(y)
        out.ids[split] = ids
        out.labels[split] = np.array(rows, dtype=np.int8).reshape(len(ids), len(classes))
    if "train" in out.ids and "val" in out.ids:
        out.ids["trainval"] = sorted(out.ids["train"] + out.ids["val"])
        order = np.argsort(out.ids["train"] + out.ids["val"], kind="stable")
        out.labels["trainval"] = np.concatenate([out.labels["train"], out.labels["val"]])[order]
    main_dir = voc / "ImageSets" / "Main"
    for split, ids in out.ids.items():
        if year == "2012" and split == "test":
            if with_test:
                _write_lines(main_dir / "test.txt", ids)
            continue
        _write_lines(main_dir / f"{split}.txt", ids)
        for k, name in enumerate(classes):
            _write_lines(main_dir / f"{name}_{split}.txt",
                         [f"{i} {int(lab):2d}"
                          for i, lab in zip(ids, out.labels[split][:, k], strict=True)])
    if year == "2012":
        if not with_test and "test" in out.ids:
            del out.ids["test"], out.labels["test"]
        elif "test" in out.labels:
            del out.labels["test"]  # written without labels, like the real test set
    return out


def make_voc_action(root, n_per_split: dict | None = None, seed: int = 0, size=(64, 48),
                    with_test: bool = False) -> GeneratedDataset:
    """A VOC 2012 action layout: ``ImageSets/Action`` files, person boxes with ``<actions>``.

    Each image has one or two persons, each doing one action (cycled). ``ids[split]`` are
    box ids ``"<image id>#<objidx>"``; ``labels[split]`` their +-1 action labels.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    n_per_split = n_per_split or {"train": 20, "val": 20}
    if with_test:
        n_per_split = {**n_per_split, "test": n_per_split.get("test", 10)}
    voc = root / "VOCdevkit" / "VOC2012"
    actions = VOC_ACTIONS
    out = GeneratedDataset(root=root, classes=actions)
    counter = 0
    for split, n in n_per_split.items():
        keys, rows, image_ids = [], [], []
        for _ in range(n):
            counter += 1
            image_id = f"2010_{counter:06d}"
            image_ids.append(image_id)
            objects = []
            for _person in range(1 + int(rng.random() < 0.4)):
                act = (counter + len(objects)) % len(actions)
                flags = {a: int(j == act) for j, a in enumerate(actions)}
                flags["other"] = 0
                objects.append({"name": "person", "box": _random_box(rng, size),
                                "actions": flags, "act": act})
            rects = [(o["box"], class_colour(o["act"], len(actions))) for o in objects]
            write_image(voc / "JPEGImages" / f"{image_id}.jpg", size, rects, seed=counter)
            (voc / "Annotations").mkdir(parents=True, exist_ok=True)
            (voc / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(image_id, size, objects))
            for objidx, obj in enumerate(objects, start=1):
                key = f"{image_id}#{objidx}"
                keys.append(key)
                out.boxes[key] = obj["box"]
                row = -np.ones(len(actions), dtype=np.int8)
                row[obj["act"]] = 1
                rows.append(row)
        order = np.argsort(keys, kind="stable")
        out.ids[split] = [keys[i] for i in order]
        out.labels[split] = np.array(rows, dtype=np.int8).reshape(len(keys), len(actions))[order]
        action_dir = voc / "ImageSets" / "Action"
        _write_lines(action_dir / f"{split}.txt", sorted(set(image_ids)))
        if split == "test":
            del out.labels[split]
            continue
        _write_action_labels(action_dir, split, out.ids[split], out.labels[split])
    if "train" in out.ids and "val" in out.ids:  # the devkit ships trainval files too
        keys = out.ids["train"] + out.ids["val"]
        order = np.argsort(keys, kind="stable")
        y = np.concatenate([out.labels["train"], out.labels["val"]])[order]
        _write_action_labels(voc / "ImageSets" / "Action", "trainval",
                             [keys[i] for i in order], y)
        _write_lines(voc / "ImageSets" / "Action" / "trainval.txt",
                     sorted({k.split("#")[0] for k in keys}))
    return out


def _write_action_labels(action_dir: Path, split: str, keys, labels) -> None:
    for k, action in enumerate(VOC_ACTIONS):
        lines = []
        for key, lab in zip(keys, labels[:, k], strict=True):
            image_id, objidx = key.split("#")
            lines.append(f"{image_id} {objidx} {int(lab):2d}")
        _write_lines(action_dir / f"{action}_{split}.txt", lines)


def make_caltech(root, kind: str = "101", classes=None, per_class=8, seed: int = 0,
                 size=(48, 40), stray: bool = True) -> GeneratedDataset:
    """``root/101_ObjectCategories/<class>/image_NNNN.jpg`` or the 256 layout.

    ``per_class``: an int, or a dict class -> count. With ``stray``, non-image entries like
    those of the real archives are added (they must be ignored by the reader).
    """
    root = Path(root)
    kind = str(kind)
    classes = tuple(classes or (CALTECH101_CLASSES if kind == "101" else CALTECH256_CLASSES))
    base = root / f"{kind}_ObjectCategories"
    out = GeneratedDataset(root=root, classes=tuple(sorted(classes)))
    ids, rows = [], []
    for name in sorted(classes):
        k = out.classes.index(name)
        count = per_class[name] if isinstance(per_class, dict) else per_class
        for j in range(1, count + 1):
            filename = f"image_{j:04d}.jpg" if kind == "101" else f"{name[:3]}_{j:04d}.jpg"
            rng = np.random.default_rng([seed, k, j])
            box = _random_box(rng, size)
            write_image(base / name / filename, size, [(box, class_colour(k, len(classes)))],
                        seed=seed * 100_003 + k * 1000 + j)
            ids.append(f"{name}/{filename}")
            row = -np.ones(len(classes), dtype=np.int8)
            row[k] = 1
            rows.append(row)
        if stray and k == 0:
            (base / name / "Thumbs.db").write_bytes(b"\0\1")
            (base / name / "RENAME2").write_text("stray\n")
            (base / name / "greg").mkdir(exist_ok=True)
    order = np.argsort(ids, kind="stable")
    out.ids["all"] = [ids[i] for i in order]
    out.labels["all"] = np.array(rows, dtype=np.int8)[order]
    return out


def make_folder_dataset(root, classes=("cat", "dog", "fish"), per_class=6, split_dirs=False,
                        seed: int = 0, size=(48, 40)) -> GeneratedDataset:
    """Custom data: ``root/<class>/<n>.jpg``, or ``root/{train,test}/<class>/<n>.jpg``."""
    root = Path(root)
    classes = tuple(sorted(classes))
    out = GeneratedDataset(root=root, classes=classes)
    splits = ("train", "test") if split_dirs else ("all",)
    for split in splits:
        ids, rows = [], []
        for k, name in enumerate(classes):
            for j in range(per_class):
                rel = f"{name}/{j:03d}.jpg" if split == "all" else f"{split}/{name}/{j:03d}.jpg"
                box = _random_box(np.random.default_rng([seed, k, j, len(split)]), size)
                write_image(root / rel, size, [(box, class_colour(k, len(classes)))],
                            seed=seed * 100_003 + k * 1000 + j + 500 * (split == "test"))
                ids.append(rel)
                row = -np.ones(len(classes), dtype=np.int8)
                row[k] = 1
                rows.append(row)
        order = np.argsort(ids, kind="stable")
        out.ids[split] = [ids[i] for i in order]
        out.labels[split] = np.array(rows, dtype=np.int8)[order]
    return out


def make_csv_dataset(root, classes=("cat", "dog", "fish"), n_images=24, multi_label=False,
                     with_split=True, test_frac=0.25, seed: int = 0,
                     size=(48, 40)) -> GeneratedDataset:
    """Custom data listed in ``root/labels.csv`` (images in ``root/images``).

    Multi-label data use the ``labels`` column separated by ``;``. ``ids`` has ``train``
    and ``test`` with ``with_split``, else ``all``.
    """
    root = Path(root)
    classes = tuple(sorted(classes))
    rng = np.random.default_rng(seed)
    rows, records = [], []
    for i in range(n_images):
        y = -np.ones(len(classes), dtype=np.int8)
        y[i % len(classes)] = 1
        if multi_label and rng.random() < 0.5:
            y[int(rng.integers(len(classes)))] = 1
        rel = f"images/{i:04d}.jpg"
        rects = [(_random_box(rng, size), class_colour(k, len(classes)))
                 for k in np.flatnonzero(y == 1)]
        write_image(root / rel, size, rects, seed=seed * 7919 + i)
        split = "test" if (i // len(classes)) % round(1 / test_frac) == 0 else "train"
        names = [classes[k] for k in np.flatnonzero(y == 1)]
        records.append((rel, ";".join(names), split))
        rows.append(y)
    header = ["path", "labels" if multi_label else "label"] + (["split"] if with_split else [])
    with (root / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for rel, names, split in records:
            writer.writerow([rel, names] + ([split] if with_split else []))
    out = GeneratedDataset(root=root, classes=classes)
    y_all = np.array(rows, dtype=np.int8)
    groups = {"train": [], "test": []} if with_split else {"all": []}
    for i, (_rel, _names, split) in enumerate(records):
        groups[split if with_split else "all"].append(i)
    for split, idx in groups.items():
        out.ids[split] = [records[i][0] for i in idx]
        out.labels[split] = y_all[idx]
    return out


def class_descriptors(y: np.ndarray, dim: int = 32, scales: int = 1, noise: float = 0.3,
                      seed: int = 0) -> np.ndarray:
    """Non-negative descriptors ``(n, scales, dim)`` in which positives of each class share
    a direction, so linear SVMs can separate them (``noise`` controls how well)."""
    rng = np.random.default_rng(seed)
    n, n_classes = y.shape
    directions = np.abs(rng.normal(size=(n_classes, dim)))
    base = (y == 1).astype(np.float64) @ directions
    x = base[:, None, :] + noise * np.abs(rng.normal(size=(n, scales, dim)))
    return x.astype(np.float32)


def write_feature_cache(path, *, dataset: str, root, ids, descriptors, reader_options=None,
                        boxes=None, scales=None, arch: str = "vgg16", layer: str = "fc7",
                        weights_sha256: str = "0" * 64, flip: bool = True, done=None) -> Path:
    """Write an HDF5 feature cache following the contract of issue 3.

    ``descriptors``: ``(N, S, D)``. ``boxes``: optional ``(box_ids, box_descriptors)`` for
    voc2012-action, written to the ``boxes`` group.
    """
    import h5py

    path = Path(path)
    descriptors = np.asarray(descriptors, dtype=np.float32)
    if descriptors.ndim == 2:
        descriptors = descriptors[:, None, :]
    scales = list(scales or [256 + 128 * s for s in range(descriptors.shape[1])])
    string = h5py.string_dtype("utf-8")

    def fill(group, these_ids, these_desc):
        group.create_dataset("ids", data=np.array(list(these_ids), dtype=object), dtype=string)
        group.create_dataset("descriptors", data=these_desc)
        flags = np.ones(len(these_ids), bool) if done is None else np.asarray(done, bool)
        group.create_dataset("done", data=flags)
        failed = np.dtype([("id", string), ("reason", string)])
        group.create_dataset("failed", shape=(0,), maxshape=(None,), dtype=failed)

    with h5py.File(path, "w") as f:
        fill(f, ids, descriptors)
        if boxes is not None:
            box_ids, box_desc = boxes
            box_desc = np.asarray(box_desc, dtype=np.float32)
            if box_desc.ndim == 2:
                box_desc = box_desc[:, None, :]
            fill(f.create_group("boxes"), box_ids, box_desc)
        preprocessing = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                         "channel_order": "RGB", "value_scale": 1.0}
        f.attrs.update({
            "vggfeat_version": "test", "dataset": dataset, "root": str(root), "arch": arch,
            "layer": layer, "weights_sha256": weights_sha256,
            "scales": np.array(scales, dtype=np.int64), "flip": flip,
            "preprocessing": json.dumps(preprocessing),
            "reader_options": json.dumps(reader_options or {}),
            "config_key": f"{dataset}-{arch}-{layer}-{weights_sha256[:8]}",
        })
    return path


def voc_descriptors(base: Path, sizes: dict, dim: int, scales: int):
    """A VOC 2007 layout under `base` and descriptors that carry its labels.

    Returns (layout, image ids in the reader's order, descriptors n x scales x dim); each
    image's descriptor is drawn around its first positive class (difficult counts as 1).
    """
    data = make_voc(base / "data", "2007", sizes)
    ids = [s.id for s in open_dataset("voc2007", data.root).images()]
    labels = dict(zip(data.ids["trainval"] + data.ids["test"],
                      np.concatenate([data.labels["trainval"], data.labels["test"]]),
                      strict=True))
    y = np.array([labels[i] for i in ids])
    x = class_descriptors(np.where(y == 0, 1, y), dim=dim, scales=scales, noise=0.3, seed=0)
    return data, ids, x


def small_voc_cache(base: Path) -> Path:
    """A feature cache of a small VOC 2007 layout (12/12/16 images, 16-D, one scale) under
    `base`, its descriptors carrying the labels: what svm-eval's fault and output tests run on."""
    data, ids, x = voc_descriptors(base, {"train": 12, "val": 12, "test": 16}, dim=16, scales=1)
    return write_feature_cache(base / "d.h5", dataset="voc2007", root=data.root, ids=ids,
                               descriptors=x, arch="vgg16")


def slow_extract_args(root: Path, weights, per_class: int) -> list:
    """A two-class folder dataset at `root` and `vggfeat extract` options that take a while
    on it (three scales, batches of one): for tests that interrupt or race a run."""
    make_folder_dataset(root, classes=("a", "b"), per_class=per_class)
    return ["--dataset", "folder", "--root", root, "--weights", weights,
            "--scales", "64,96,128", "--device", "cpu", "--batch-size", "1", "--quiet"]
