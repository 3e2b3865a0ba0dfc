"""Box geometry of the localisation task (paper Appendix A): IoU, targets, greedy merging.

Conventions. A box in image or crop pixels is `xyxy` = (x1, y1, x2, y2), 0-based with an
exclusive end (a box over a whole W x H image is (0, 0, W, H)); the ILSVRC/VOC devkits'
1-based inclusive boxes become (xmin - 1, ymin - 1, xmax, ymax), so IoU here equals the
devkits' "+1" IoU. The net predicts a box relative to its input crop, as the paper:
(centre x, centre y, width, height) divided by the crop side (`encode_boxes`).
"""
from __future__ import annotations

import numpy as np
import torch


def box_iou(a, b) -> np.ndarray:
    """Intersection over union of every pair of xyxy boxes.

    Args:
        a: (N, 4) boxes.
        b: (M, 4) boxes.

    Returns:
        (N, M) float64 array; 0 where a box has no area.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def encode_boxes(boxes, crop: int):
    """xyxy boxes in crop pixels -> (cx, cy, w, h) / crop, the regression target."""
    b = torch.as_tensor(boxes, dtype=torch.float32)
    return torch.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2,
                        b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]], -1) / crop


def decode_boxes(codes, crop: int):
    """(cx, cy, w, h) / crop -> xyxy boxes in crop pixels (inverse of `encode_boxes`)."""
    c = torch.as_tensor(codes, dtype=torch.float32) * crop
    half_w, half_h = c[..., 2] / 2, c[..., 3] / 2
    return torch.stack([c[..., 0] - half_w, c[..., 1] - half_h,
                        c[..., 0] + half_w, c[..., 1] + half_h], -1)


def image_to_crop(boxes, scale_xy, offset_xy, crop: int, flip: bool):
    """Image-pixel xyxy boxes -> crop pixels after rescale, crop and (optional) flip.

    Args:
        boxes: (K, 4) boxes in the original image's pixels.
        scale_xy: (sx, sy), rescaled size over original size per axis.
        offset_xy: (left, top) of the crop in the rescaled image.
        crop: crop side.
        flip: whether the crop was flipped horizontally.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    b[:, [0, 2]] = b[:, [0, 2]] * scale_xy[0] - offset_xy[0]
    b[:, [1, 3]] = b[:, [1, 3]] * scale_xy[1] - offset_xy[1]
    if flip:
        b[:, [0, 2]] = crop - b[:, [2, 0]]
    return b


def crop_to_image(boxes, scale_xy, offset_xy, crop: int, flip: bool):
    """Inverse of `image_to_crop`: crop-pixel boxes -> original image pixels."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    if flip:
        b[:, [0, 2]] = crop - b[:, [2, 0]]
    b[:, [0, 2]] = (b[:, [0, 2]] + offset_xy[0]) / scale_xy[0]
    b[:, [1, 3]] = (b[:, [1, 3]] + offset_xy[1]) / scale_xy[1]
    return b


def crop_target(boxes, scale_xy, offset_xy, crop: int, flip: bool):
    """The regression target of one augmented crop, or None when no box overlaps it.

    The target is the ground-truth box with the largest area inside the crop, in crop
    coordinates, *not* clipped to the crop (the paper regresses "the box relative to the
    crop"): an object cut by the crop's edge keeps its full extent, so a box predicted
    from a central crop or a dense window can reach past the window, which is what the
    evaluation against whole-image boxes needs. A crop that misses every box has no
    target (its sample is left out of the loss).
    """
    b = image_to_crop(boxes, scale_xy, offset_xy, crop, flip)
    inside = (np.clip(np.minimum(b[:, 2], crop) - np.maximum(b[:, 0], 0), 0, None)
              * np.clip(np.minimum(b[:, 3], crop) - np.maximum(b[:, 1], 0), 0, None))
    if not len(b) or inside.max() <= 0:
        return None
    return encode_boxes(b[int(np.argmax(inside))], crop)


# -- greedy merging (Sermanet et al. 2014, "OverFeat", section 4.3) ----------------------

def match_score(a, b) -> np.ndarray:
    """OverFeat's dissimilarity of box pairs: centre distance plus non-overlap.

    OverFeat's text defines it only as using "the sum of the distance between centers of
    the two bounding boxes and the intersection area"; vggfeat's choice makes both terms
    scale free: ||c_a - c_b|| / mean(sqrt(area_a), sqrt(area_b)) + (1 - IoU(a, b)).
    0 for identical boxes, above 1 for disjoint ones.
    """
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    ca, cb = (a[:, :2] + a[:, 2:]) / 2, (b[:, :2] + b[:, 2:]) / 2
    dist = np.linalg.norm(ca[:, None] - cb[None], axis=-1)
    side_a = np.sqrt(np.clip((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), 0, None))
    side_b = np.sqrt(np.clip((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 0, None))
    size = np.maximum((side_a[:, None] + side_b[None]) / 2, 1e-12)
    return dist / size + 1 - box_iou(a, b)


def merge_boxes(boxes, scores, threshold: float = 1.0):
    """Greedy merging of box predictions, as OverFeat (section 4.3) and the paper (A.1).

    Repeatedly take the pair of boxes with the lowest `match_score`; stop when it exceeds
    `threshold`; else replace the pair by one box, the mean of the coordinates of all the
    predictions merged into it, whose score is the sum of theirs ("cumulatively adding the
    detection class outputs"). Deterministic: the result depends on the input alone.

    Args:
        boxes: (N, 4) xyxy boxes.
        scores: (N,) scores (class posteriors of the windows that predicted the boxes).
        threshold: largest match score at which two boxes still merge.

    Returns:
        (merged boxes (K, 4), summed scores (K,), counts (K,)), by decreasing score.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    sums, score, count = boxes.copy(), scores.copy(), np.ones(len(boxes))
    alive = np.ones(len(boxes), bool)
    dist = match_score(boxes, boxes)
    np.fill_diagonal(dist, np.inf)
    # Row minima are kept up to date so that each merge costs O(N), not O(N^2).
    best = dist.argmin(1) if len(boxes) else np.zeros(0, int)
    while alive.sum() > 1:
        rows = np.flatnonzero(alive)
        i = rows[np.argmin(dist[rows, best[rows]])]
        j = best[i]
        if not dist[i, j] <= threshold:
            break
        i, j = min(i, j), max(i, j)
        sums[i] += sums[j]
        score[i] += score[j]
        count[i] += count[j]
        alive[j] = False
        dist[j, :], dist[:, j] = np.inf, np.inf
        row = match_score(sums[i] / count[i], sums[alive] / count[alive, None])[0]
        dist[i, alive] = row
        dist[alive, i] = row
        dist[i, i] = np.inf
        for r in np.flatnonzero(alive & ((best == i) | (best == j) | (np.arange(len(best)) == i))):
            best[r] = dist[r].argmin()
        others = np.flatnonzero(alive & (dist[:, i] < dist[np.arange(len(best)), best]))
        best[others] = i
    keep = np.flatnonzero(alive)
    merged = sums[keep] / count[keep, None]
    order = np.argsort(-score[keep], kind="stable")
    return merged[order], score[keep][order], count[keep][order]
