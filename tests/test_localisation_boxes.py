"""Box geometry of localisation: IoU, targets through the augmentation, greedy merging."""
import itertools

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vggfeat.localisation import box_iou, decode_boxes, encode_boxes, merge_boxes
from vggfeat.localisation.boxes import crop_target, crop_to_image, image_to_crop, match_score
from vggfeat.localisation.train import LocTransform
from vggfeat.training.augment import sample_generator


def test_iou_hand_worked():
    a = [[0, 0, 10, 10], [0, 0, 10, 10]]
    b = [[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10], [2, 2, 4, 4], [0, 0, 0, 5]]
    iou = box_iou(a, b)
    assert iou.shape == (2, 5)
    # 50 shared of 150 in the union; disjoint; identical; 4 inside 100; an empty box.
    np.testing.assert_allclose(iou[0], [50 / 150, 0, 1, 4 / 100, 0])
    np.testing.assert_allclose(iou[1], iou[0])


def test_encode_decode_round_trip():
    boxes = np.array([[3.0, 5.0, 40.0, 60.0], [-10.0, 2.0, 70.0, 30.0]])
    codes = encode_boxes(boxes, 64)
    np.testing.assert_allclose(codes[0], [21.5 / 64, 32.5 / 64, 37 / 64, 55 / 64], rtol=1e-6)
    np.testing.assert_allclose(decode_boxes(codes, 64), boxes, atol=1e-4)


@pytest.mark.parametrize("scale_xy,offset,flip", [((0.5, 0.5), (5, 0), True),
                                                 ((1.0, 1.0), (0, 0), False),
                                                 ((2.0, 2.0), (30, 12), True),
                                                 ((0.75, 0.76), (3, 9), False)])
def test_image_crop_round_trip(scale_xy, offset, flip):
    boxes = np.array([[10.0, 10.0, 30.0, 40.0], [0.0, 0.0, 100.0, 50.0]])
    there = image_to_crop(boxes, scale_xy, offset, 20, flip)
    np.testing.assert_allclose(crop_to_image(there, scale_xy, offset, 20, flip), boxes)


def test_crop_target_hand_worked():
    # A 100x50 image rescaled to 50x25, a 20-pixel crop at (5, 0), flipped: the box
    # (10, 10, 30, 40) becomes (5, 5, 15, 20) rescaled, (0, 5, 10, 20) in the crop,
    # (10, 5, 20, 20) flipped: centre (15, 12.5), size 10 x 15, all over 20.
    t = crop_target([[10, 10, 30, 40]], (0.5, 0.5), (5, 0), 20, True)
    np.testing.assert_allclose(t, [15 / 20, 12.5 / 20, 10 / 20, 15 / 20], rtol=1e-6)
    # Not clipped: a box past the crop keeps its extent.
    t = crop_target([[0, 0, 100, 50]], (0.5, 0.5), (5, 0), 20, False)
    np.testing.assert_allclose(decode_boxes(t, 20), [-5, 0, 45, 25], atol=1e-5)
    # Of two boxes the one with the most area inside the crop; none inside: no target.
    t = crop_target([[200, 0, 220, 20], [0, 0, 20, 20]], (1, 1), (0, 0), 20, False)
    np.testing.assert_allclose(decode_boxes(t, 20), [0, 0, 20, 20], atol=1e-5)
    assert crop_target([[30, 30, 40, 40]], (1, 1), (0, 0), 20, False) is None


def solid_box_image(w, h, box):
    img = Image.new("RGB", (w, h), (0, 0, 0))
    ImageDraw.Draw(img).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(255, 255, 255))
    return img


def pixel_box(x: torch.Tensor):
    """xyxy (exclusive) of the bright pixels of a uint8 crop (3, c, c)."""
    ys, xs = np.nonzero(x[0].numpy() > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)


@pytest.mark.parametrize("scale,seed", list(itertools.product([64, 80, (64, 96)], range(4))))
def test_target_follows_the_augmented_pixels(scale, seed):
    """The target of a random crop (rescale, crop, flip) is where the object's pixels are."""
    box = (30, 20, 90, 70)
    img = solid_box_image(120, 100, box)
    transform = LocTransform(scale, 64, train=True, flip=True, lighting_std=0)
    x, _, target = transform(img, np.array([box], float), sample_generator(seed, 0, 1))
    expected = decode_boxes(target, 64).numpy()
    visible = np.clip(expected, 0, 64)  # the pixels show only the part inside the crop
    np.testing.assert_allclose(pixel_box(x), visible, atol=1.5)


def naive_merge(boxes, scores, threshold):
    """Greedy merging written the slow, obvious way: recompute every pair each time."""
    groups = [[i] for i in range(len(boxes))]

    def mean(g):
        return boxes[g].mean(0)

    while len(groups) > 1:
        pairs = [(match_score(mean(a), mean(b))[0, 0], ia, ib)
                 for ia, a in enumerate(groups) for ib, b in enumerate(groups) if ia < ib]
        best, ia, ib = min(pairs)
        if best > threshold:
            break
        groups[ia] = groups[ia] + groups[ib]
        del groups[ib]
    out = sorted(((scores[g].sum(), tuple(mean(g))) for g in groups), reverse=True)
    return np.array([b for _, b in out]), np.array([s for s, _ in out])


def test_merge_hand_worked():
    boxes = [[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]]
    merged, scores, counts = merge_boxes(boxes, [0.2, 0.3, 0.4])
    # The two overlapping boxes (score 0.1 + 0.18 = 0.28 < 1) merge to their mean and sum
    # their scores; the far box (score > 1) stays alone.
    np.testing.assert_allclose(merged, [[0.5, 0, 10.5, 10], [50, 50, 60, 60]])
    np.testing.assert_allclose(scores, [0.5, 0.4])
    np.testing.assert_array_equal(counts, [2, 1])
    # match score by hand: centres 1 apart, size 10, IoU 90/110.
    assert match_score(boxes[0], boxes[1])[0, 0] == pytest.approx(0.1 + 1 - 90 / 110)
    merged, scores, _ = merge_boxes(boxes, [0.2, 0.3, 0.4], threshold=0.1)
    assert len(merged) == 3  # 0.28 > 0.1: nothing merges


@pytest.mark.parametrize("seed", range(3))
def test_merge_matches_the_naive_algorithm(seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (25, 2))
    wh = rng.uniform(10, 40, (25, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = rng.uniform(0, 1, 25)
    for threshold in (0.5, 1.5):
        merged, summed, counts = merge_boxes(boxes, scores, threshold)
        ref_boxes, ref_scores = naive_merge(boxes, scores, threshold)
        np.testing.assert_allclose(merged, ref_boxes, rtol=1e-9)
        np.testing.assert_allclose(summed, ref_scores, rtol=1e-9)
        assert counts.sum() == len(boxes)
