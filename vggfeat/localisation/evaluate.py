"""Localisation error by the paper's two test protocols (Appendix A.1-A.2, Tables 8-9).

- center: the box of the ground-truth class predicted from the central crop at one scale
  (Table 8: "GT class localisation error").
- dense: the box head over the whole image at every scale (and its flip); the top-5
  classes and every window's class posteriors from the classification nets; per class,
  the boxes of all windows (of all localisation nets: the union) merged greedily
  (`merge_boxes`), the merged box with the largest summed score kept (Table 9).

A prediction is correct when its class is the image's and its IoU with one of the image's
ground-truth boxes is at least `iou_threshold` (0.5, the ILSVRC criterion).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vggfeat.data.images import BadImageError, open_rgb
from vggfeat.data.readers import LocImages, read_localisation
from vggfeat.localisation.boxes import box_iou, merge_boxes
from vggfeat.localisation.predict import (
    box_heads,
    centre_boxes,
    default_scale,
    scores_at,
    to_input,
    window_boxes,
    window_posteriors,
)
from vggfeat.training.evaluate import dense_posterior, net_label
from vggfeat.utils.errors import InputError
from vggfeat.utils.progress import progress_bar

PROTOCOLS = ("center", "dense")


class LocalisationEvalError(InputError):
    """The nets and the data do not fit together; the message says how to fix it."""


class _Images(Dataset):
    def __init__(self, images: LocImages):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        path = self.images.root / self.images.paths[index]
        try:
            return open_rgb(path), None
        except BadImageError as error:
            return None, f"{path}: {error.reason}"


def class_index(model, classes, name: str) -> dict[str, int]:
    """Output (box head or class) index of each class name a net knows."""
    known = model.meta.get("classes")
    if not known:
        raise LocalisationEvalError(f"{name} does not record its classes; use a net written by "
                                    "train-backbone.")
    return {c: i for i, c in enumerate(known)}


def correct(box, gt_boxes, threshold: float) -> bool:
    return bool(box_iou(np.asarray(box)[None], gt_boxes).max() >= threshold)


def _check_loc_net(model, name: str) -> None:
    if model.meta.get("task") != "localisation":
        raise LocalisationEvalError(f"{name} is not a localisation net; give a run of "
                                    "train-backbone --task localisation.")
    box_heads(model)


def evaluate_localisation(data, weights, classifiers=(), protocol: str = "center",
                          scales=None, device: str = "cpu", workers: int = 0,
                          quiet: bool = False, limit: int | None = None,
                          iou_threshold: float = 0.5, merge_threshold: float = 1.0,
                          net_scales=None):
    """Localisation error rows of each localisation net (and of their union, dense).

    Args:
        data: ILSVRC CLS-LOC folder or localisation CSV; its val split is evaluated.
        weights: localisation backbone files or run folders.
        classifiers: classification nets (dense protocol): top-5 classes and window scores.
        protocol: "center" or "dense".
        scales: test scales Q [the first net's training S].
        net_scales: per localisation net, its own scales (None: `scales`), for fusions
            such as the paper's "256/256 and 384/352,384".
        limit: evaluate N images spread over the split.

    Returns:
        (rows, bad): rows are dicts (see `format_table`); bad lists unreadable images.
    """
    from vggfeat.models import load_backbone

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    loc = [load_backbone(_backbone_file(w)).to(device).eval() for w in weights]
    names = [net_label(m, _backbone_file(w)) for m, w in zip(loc, weights, strict=True)]
    for m, name in zip(loc, names, strict=True):
        _check_loc_net(m, name)
    if protocol == "dense" and not classifiers:
        raise LocalisationEvalError("the dense protocol takes its classes from classification "
                                    "nets: give --classifier CLS_RUN.")
    cls = [load_backbone(_backbone_file(w)).to(device).eval() for w in classifiers]
    images = read_localisation(data, "val")
    if limit:
        step = max(1, len(images) // limit)
        keep = list(range(0, len(images), step))[:limit]
        images = LocImages(images.root, images.classes, *(
            tuple(getattr(images, f)[i] for i in keep) for f in ("paths", "labels", "boxes")))
    scales = list(scales or [default_scale(loc[0])])
    per_net = [list(own) if own else scales for own in (net_scales or [None] * len(loc))]
    lowest = min(min(qs) for qs in per_net)
    for m in loc + cls:
        if lowest < m.meta["crop_size"]:
            raise LocalisationEvalError(f"test scale {lowest} is below the "
                                        f"{m.meta['crop_size']}-pixel crop; raise --scales.")
    run = _centre if protocol == "center" else _dense
    return run(loc, names, cls, images, per_net, device, workers, quiet, iou_threshold,
               merge_threshold)


def _backbone_file(weights) -> str:
    path = Path(weights)
    return str(path / "backbone.pth") if path.is_dir() else str(weights)


def _loop(images, workers, quiet, desc):
    loader = DataLoader(_Images(images), batch_size=None, num_workers=workers)
    return progress_bar(loader, total=len(images), file=sys.stderr, disable=quiet, desc=desc)


def _row(model, name, protocol, scales, **errors) -> dict:
    return {"net": name, "regression": "PCR" if box_heads(model) > 1 else "SCR",
            "finetune": model.meta.get("finetune"),
            "train_scale": model.meta.get("training", {}).get("scale"),
            "test_scales": list(scales), "protocol": protocol, **errors}


@torch.no_grad()
def _centre(loc, names, cls, images, scales, device, workers, quiet, iou_threshold, _merge):
    hits, n, bad = np.zeros(len(loc)), 0, []
    heads = [class_index(m, images.classes, name) for m, name in zip(loc, names, strict=True)]
    for index, (img, problem) in enumerate(_loop(images, workers, quiet, "localise (center)")):
        if problem:
            bad.append(problem)
            continue
        gt_name = images.classes[images.labels[index]]
        for k, (model, head) in enumerate(zip(loc, heads, strict=True)):
            boxes = centre_boxes(model, img, scales[k][0], device)
            if len(boxes) > 1 and gt_name not in head:
                raise LocalisationEvalError(f"{names[k]} has no box head for class {gt_name!r}.")
            box = boxes[head[gt_name] if len(boxes) > 1 else 0]
            hits[k] += correct(box, images.boxes[index], iou_threshold)
        n += 1
    rows = [_row(m, name, "center", qs[:1], gt_class_err=100 * (1 - h / max(n, 1)), images=n)
            for m, name, h, qs in zip(loc, names, hits, scales, strict=True)]
    return rows, bad


def _dense_sets(loc, cls, img, per_net, device):
    """Per (localisation net, scale): [(boxes (n, B, 4), scores (n, C))], and per scale the
    image's class posterior, both averaged over the classification nets."""
    sets, posterior = {}, {}
    for q in sorted({q for qs in per_net for q in qs}):
        inputs = [to_input(img, q, m, device) for m in cls]
        posterior[q] = np.mean([dense_posterior(m, x).cpu().numpy()
                                for m, (x, _) in zip(cls, inputs, strict=True)], axis=0)
        maps = {f: [window_posteriors(m, x, f) for m, (x, _) in zip(cls, inputs, strict=True)]
                for f in (False, True)}
        for k, model in enumerate(loc):
            if q not in per_net[k]:
                continue
            x, scale_xy = to_input(img, q, model, device)
            for f in (False, True):
                wb = window_boxes(model, x, scale_xy, f)
                scores = np.mean([scores_at(p, wb.centres, m.meta["crop_size"], m.stride)
                                  for p, m in zip(maps[f], cls, strict=True)], axis=0)
                sets.setdefault((k, q), []).append((wb.boxes, scores))
    return sets, posterior


def localise(sets, posterior, keys, scales, heads, cls_classes, merge_threshold, top=5):
    """The top-`top` (class name, box) predictions from the union of `keys`' boxes."""
    probs = np.mean([posterior[q] for q in scales], axis=0)
    out = []
    for c in np.argsort(-probs, kind="stable")[:top]:
        name = cls_classes[c]
        boxes, scores = [], []
        for key in keys:
            head = heads[key[0]]
            for b, s in sets[key]:
                if b.shape[1] > 1 and name not in head:
                    continue
                boxes.append(b[:, head[name] if b.shape[1] > 1 else 0])
                scores.append(s[:, c])
        if boxes:
            merged, _, _ = merge_boxes(np.concatenate(boxes), np.concatenate(scores),
                                       merge_threshold)
            out.append((name, merged[0]))
        else:
            out.append((name, None))
    return out


@torch.no_grad()
def _dense(loc, names, cls, images, scales, device, workers, quiet, iou_threshold,
           merge_threshold):
    cls_classes = cls[0].meta.get("classes")
    if not cls_classes or any(m.meta.get("classes") != cls_classes for m in cls):
        raise LocalisationEvalError("the classification nets must record the same class list "
                                    "(nets written by train-backbone on the same classes).")
    heads = [class_index(m, images.classes, name) for m, name in zip(loc, names, strict=True)]
    groups = []  # (first net, label, [(net, scale) box sets], scales of the class posterior)
    for k, (name, own) in enumerate(zip(names, scales, strict=True)):
        subsets = [[q] for q in own] if len(own) > 1 else []
        groups += [(k, name, [(k, q) for q in qs], qs) for qs in subsets + [own]]
    if len(loc) > 1:
        every = sorted({q for own in scales for q in own})
        groups.append((0, " & ".join(names),
                       [(k, q) for k, own in enumerate(scales) for q in own], every))
    hits = np.zeros((len(groups), 2))
    n, bad = 0, []
    for index, (img, problem) in enumerate(_loop(images, workers, quiet, "localise (dense)")):
        if problem:
            bad.append(problem)
            continue
        sets, posterior = _dense_sets(loc, cls, img, scales, device)
        gt_name, gt_boxes = images.classes[images.labels[index]], images.boxes[index]
        for g, (_, _, keys, qs) in enumerate(groups):
            preds = localise(sets, posterior, keys, qs, heads, cls_classes, merge_threshold)
            ok = [name == gt_name and box is not None and correct(box, gt_boxes, iou_threshold)
                  for name, box in preds]
            hits[g] += [ok[0], any(ok)]
        n += 1
    rows = []
    for (k, label, keys, qs), (top1, top5) in zip(groups, hits, strict=True):
        row = _row(loc[k], label, "dense", qs, top1_loc_err=100 * (1 - top1 / max(n, 1)),
                   top5_loc_err=100 * (1 - top5 / max(n, 1)), images=n)
        nets = sorted({i for i, _ in keys})
        if len(nets) > 1:
            row.update(regression="+".join(sorted({_row(loc[i], "", "", [])["regression"]
                                                   for i in nets})), train_scale=None,
                       test_scales=[f"{i + 1}:{q}" for i, q in keys])
        rows.append(row)
    return rows, bad


def format_table(rows: list[dict]) -> str:
    """Rows in the layout of the paper's Table 8 (center) or Table 9 (dense)."""
    def scale_text(s):
        if s is None:
            return "-"
        return f"[{s[0]};{s[1]}]" if isinstance(s, list | tuple) else str(s)

    if rows and rows[0]["protocol"] == "center":
        header = ("net", "fine-tuned layers", "regression type", "test (Q)",
                  "GT class localisation error (%)")
        body = [(r["net"], {"fc": "1st and 2nd FC", "all": "all"}.get(r["finetune"], "-"),
                 r["regression"], ",".join(map(str, r["test_scales"])),
                 f"{r['gt_class_err']:.1f}") for r in rows]
    else:
        header = ("net", "regression type", "train (S)", "test (Q)",
                  "top-1 localisation error (%)", "top-5 localisation error (%)")
        body = [(r["net"], r["regression"], scale_text(r["train_scale"]),
                 ",".join(map(str, r["test_scales"])), f"{r['top1_loc_err']:.1f}",
                 f"{r['top5_loc_err']:.1f}") for r in rows]
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
              for row in body]
    return "\n".join(lines)
