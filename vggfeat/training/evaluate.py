"""ImageNet-style classification error by the paper's test protocols (paper Sec. 3.2).

- dense: the whole image rescaled to smallest side Q, fc6-fc8 as convolutions, the class
  score map spatially averaged; softmax posteriors of the image and its flip averaged.
- multi-crop: crop_size crops on a 5x5 regular grid x 2 flips = 50 per scale, softmax
  posteriors averaged.
- multi-crop & dense: the average of the two posteriors.
- several scales Q: posteriors averaged over scales; several nets: averaged over nets.

Each net pools as its weights record (``meta["pool_rounding"]``: Caffe's converted nets
round map sizes up, as they did in Caffe); the rows say which.

`predict` returns the posteriors (one (N, C) array per net, method and scale) so that any
combination is a mean of arrays; `evaluate_backbones` builds the paper's table rows.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from vggfeat.data.scaled import ScaledImages
from vggfeat.models import PAPER_NAMES, load_backbone, normalize
from vggfeat.training.data import ImageList, scan_split
from vggfeat.utils.errors import InputError
from vggfeat.utils.progress import progress_bar

METHODS = ("dense", "multi-crop")
COMBINED = "multi-crop & dense"
GRID = 5  # 5 x 5 crop positions per scale


class EvaluationError(InputError):
    """The nets and the validation folder do not fit together."""


def grid_offsets(size: int, crop: int, n: int = GRID) -> list[int]:
    """n evenly spaced crop offsets from 0 to size - crop (both ends included)."""
    return [int(round(v)) for v in np.linspace(0, size - crop, n)]


def softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=1)


@torch.no_grad()
def dense_posterior(model, x: torch.Tensor) -> torch.Tensor:
    """(C,) posterior of one normalised image (1, 3, H, W): dense map, image + flip."""
    scores = model.dense(torch.cat([x, x.flip(-1)]), "fc8").mean((2, 3))
    return softmax(scores).mean(0)


@torch.no_grad()
def multicrop_posterior(model, x: torch.Tensor, crop: int) -> torch.Tensor:
    """(C,) posterior of one normalised image: 5x5 grid of crops x 2 flips (50 crops)."""
    h, w = x.shape[-2:]
    crops = torch.cat([x[..., top:top + crop, left:left + crop]
                       for top in grid_offsets(h, crop) for left in grid_offsets(w, crop)])
    crops = torch.cat([crops, crops.flip(-1)])
    return softmax(model(crops)).mean(0)


def label_map(model, classes: tuple[str, ...], name: str) -> np.ndarray:
    """Output index of each folder class for one net."""
    net_classes = model.meta.get("classes")
    if net_classes and set(classes) <= set(net_classes):
        index = {c: i for i, c in enumerate(net_classes)}
        return np.array([index[c] for c in classes])
    n = model.meta["num_classes"]
    if n == len(classes):  # ImageNet wnid folders, sorted, are torchvision's class order
        return np.arange(n)
    raise EvaluationError(f"{name} has {n} outputs and its classes do not name the {len(classes)} "
                          "class folders; evaluate on the classes the net was trained on.")


@dataclass
class Predictions:
    """posteriors[(net, method, Q)]: (N, C_net) float32 arrays; labels in each net's indices."""

    posteriors: dict
    labels: list[np.ndarray]
    bad: list[str]


def predict(models: list, images: ImageList, scales: list[int], methods=METHODS,
            device="cpu", workers: int = 4, quiet: bool = False) -> Predictions:
    """Posteriors of every net, method and scale over the validation images."""
    for model in models:
        crop = model.meta["crop_size"]
        if min(scales) < crop:
            raise EvaluationError(f"test scale {min(scales)} is below the {crop}-pixel crop; "
                                  f"use --scales of at least {crop}.")
    device = torch.device(device)
    models = [m.to(device).eval() for m in models]
    n = len(images.samples)
    post = {(i, meth, q): np.zeros((n, m.meta["num_classes"]), np.float32)
            for i, m in enumerate(models) for meth in methods for q in scales}
    keep = np.ones(n, bool)
    # Decoded and rescaled as the trainer validates: 8-bit PIL images, Pillow's resize.
    paths = [(k, images.root / rel) for k, (rel, _) in enumerate(images.samples)]
    loader = DataLoader(ScaledImages(paths, scales, pil=True), batch_size=None,
                        num_workers=workers)
    bad = []
    for index, scaled in progress_bar(loader, total=n, file=sys.stderr, disable=quiet,
                                      desc="evaluate"):
        if isinstance(scaled, str):  # an image that cannot be decoded: its reason
            bad.append(f"{paths[index][1]}: {scaled}")
            keep[index] = False
            continue
        for q, img in zip(scales, scaled, strict=True):
            x = img.to(device)[None].float().div_(255)
            for i, model in enumerate(models):
                xn = normalize(x, model.meta["preprocessing"])
                if "dense" in methods:
                    post[(i, "dense", q)][index] = dense_posterior(model, xn).cpu().numpy()
                if "multi-crop" in methods:
                    post[(i, "multi-crop", q)][index] = multicrop_posterior(
                        model, xn, model.meta["crop_size"]).cpu().numpy()
    folder_labels = np.array([label for _, label in images.samples])
    labels = [label_map(m, images.classes, f"net {i + 1}")[folder_labels]
              for i, m in enumerate(models)]
    # Unreadable images are left out of every number (and reported).
    post = {k: v[keep] for k, v in post.items()}
    labels = [lab[keep] for lab in labels]
    return Predictions(post, labels, bad)


def topk_error(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Percentage of images whose label is not among the k highest posteriors."""
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(100 * (1 - (top == labels[:, None]).any(1).mean()))


def combine(pred: Predictions, nets: list[int], method: str, scales: list[int]) -> np.ndarray:
    """Mean posterior over nets, scales and (for COMBINED) the two methods."""
    methods = METHODS if method == COMBINED else (method,)
    return np.mean([pred.posteriors[(i, m, q)] for i in nets for m in methods for q in scales],
                   axis=0)


def net_label(model, weights: str) -> str:
    letters = {v: k for k, v in PAPER_NAMES.items()}
    arch = model.meta["arch"]
    path = Path(str(weights))
    where = path.parent.name if path.stem in ("backbone", "checkpoint") else path.stem
    return f"{letters.get(arch.removesuffix('-bn'), arch)} ({where})"


def evaluate_backbones(weights: list[str], val_dir, scales: list[int] | None = None,
                       method: str = "both", device: str = "cpu", workers: int = 4,
                       quiet: bool = False, limit: int | None = None):
    """Top-1/top-5 error rows of each net and of their ensemble, as in paper Tables 3-6.

    Returns:
        (rows, predictions): rows are dicts with net, train_scale, test_scales, method,
        pool_rounding, top1_err and top5_err (%).
    """
    models = [load_backbone(w) for w in weights]
    images = scan_split(Path(val_dir))
    if limit:
        step = max(1, len(images.samples) // limit)  # spread over classes
        images = ImageList(images.root, images.classes, images.samples[::step][:limit])
    scales = scales or default_scales(models[0])
    methods = {"dense": ("dense",), "multicrop": ("multi-crop",), "both": METHODS}[method]
    pred = predict(models, images, scales, methods, device, workers, quiet)
    shown = list(methods) + ([COMBINED] if method == "both" else [])
    rows = []
    groups = [([i], net_label(m, w), m.meta.get("training", {}).get("scale"))
              for i, (m, w) in enumerate(zip(models, weights, strict=True))]
    if len(models) > 1:
        groups.append((list(range(len(models))), " & ".join(g[1] for g in groups), None))
    for nets, name, train_scale in groups:
        if len({tuple(pred.labels[i]) for i in nets}) > 1:
            raise EvaluationError("the nets order their classes differently; an ensemble needs "
                                  "nets trained on the same class list.")
        labels = pred.labels[nets[0]]
        for meth in shown:
            q_sets = [[q] for q in scales] if len(scales) > 1 and len(nets) == 1 else []
            for qs in q_sets + [scales]:
                probs = combine(pred, nets, meth, qs)
                rows.append({"net": name, "train_scale": train_scale, "test_scales": qs,
                             "method": meth, "pool_rounding": "/".join(
                                 sorted({models[i].pool_rounding for i in nets})),
                             "top1_err": topk_error(probs, labels, 1),
                             "top5_err": topk_error(probs, labels, 5),
                             "images": int(len(labels))})
    return rows, pred


def default_scales(model) -> list[int]:
    """The paper's test scales: S-32, S, S+32 for fixed S; min, middle, max for jittered S."""
    s = model.meta.get("training", {}).get("scale")
    if isinstance(s, list | tuple):
        return [s[0], (s[0] + s[1]) // 2, s[1]]
    if isinstance(s, int):
        return sorted({max(s - 32, model.meta["crop_size"]), s, s + 32})
    return [256, 384, 512]


def format_table(rows: list[dict]) -> str:
    """Rows in the layout of the paper's Tables 3-6."""
    def scale_text(s):
        if s is None:
            return "-"
        return f"[{s[0]};{s[1]}]" if isinstance(s, list | tuple) else str(s)

    header = ("ConvNet config.", "train (S)", "test (Q)", "method", "top-1 val. error (%)",
              "top-5 val. error (%)")
    body = [(r["net"], scale_text(r["train_scale"]), ",".join(map(str, r["test_scales"])),
             r["method"], f"{r['top1_err']:.1f}", f"{r['top5_err']:.1f}") for r in rows]
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
              for row in body]
    return "\n".join(lines)
