"""eval-backbone against an independent float64 computation of the paper's protocols."""
import copy

import numpy as np
import pytest
import torch
from helpers_training import CLASSES, make_image_folder, run_cli
from PIL import Image

from vggfeat.models import build_backbone, save_backbone
from vggfeat.training.evaluate import COMBINED, evaluate_backbones, format_table
from vggfeat.utils.threads import torch_threads

SCALES = [64, 96]
# Net 2 pools as Caffe (map sizes rounded up): eval-backbone must honour its record.
ROUNDING = ("floor", "ceil")
# Folder classes sit at scattered outputs of 10-class nets: the label mapping is tested too.
NET_CLASSES = ["x0", "blue_square", "x1", "x2", "yellow_stripes", "green_triangle", "x3",
               "red_disc", "x4", "x5"]


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_image_folder(tmp_path_factory.mktemp("shapes"), n_train=1, n_val=2, seed=4)
    paths, models = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_backbone("A", width=0.125, crop_size=64, num_classes=10, init="xavier")
        with torch.no_grad():  # confident, spread-out posteriors: no near-ties in top-k
            model.classifier[6].weight.mul_(40)
        model.meta["classes"] = NET_CLASSES
        model.set_pool_rounding(ROUNDING[seed])
        path = tmp_path_factory.mktemp(f"net{seed}") / "backbone.pth"
        save_backbone(model, path)
        paths.append(path)
        models.append(model.eval())
    with torch_threads(1):
        rows, pred = evaluate_backbones([str(p) for p in paths], root / "val", SCALES,
                                        "both", workers=0, quiet=True)
    return root, paths, models, rows, pred


# -- the reference: float64, written out from paper Sec. 3.2 ---------------------------

def load_scaled(path, q):
    img = Image.open(path).convert("RGB")
    w, h = img.size
    img = img.resize((max(q, round(w * q / min(w, h))), max(q, round(h * q / min(w, h)))),
                     Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].double() / 255
    return x


def normalise(x, model):
    mean = torch.tensor(model.meta["preprocessing"]["mean"], dtype=torch.float64)
    std = torch.tensor(model.meta["preprocessing"]["std"], dtype=torch.float64)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def head(model, flat):
    fc6, _, _, fc7, _, _, fc8 = model.classifier
    return fc8(torch.relu(fc7(torch.relu(fc6(flat)))))


def trunk(model, x, rounding):
    """conv/ReLU layers of the net; 2x2/2 max pools by reshaping, odd sides padded with
    -inf first when rounding up (Caffe) and cropped when rounding down (torch)."""
    for module in model.features:
        if isinstance(module, torch.nn.MaxPool2d):
            h, w = x.shape[-2:]
            if rounding == "ceil":
                x = torch.nn.functional.pad(x, (0, w % 2, 0, h % 2), value=float("-inf"))
            h, w = x.shape[-2] // 2, x.shape[-1] // 2
            x = x[..., :2 * h, :2 * w].reshape(*x.shape[:2], h, 2, w, 2).amax((3, 5))
        else:
            x = module(x)
    return x


def dense_reference(model, x, rounding):
    """Every 2x2 pool5 window through the Linear head (= fc6 as a 2x2 conv), then averaged."""
    probs = []
    for image in (x, x.flip(-1)):
        pool5 = trunk(model, image, rounding)[0]  # (C, h, w)
        windows = [pool5[:, i:i + 2, j:j + 2].reshape(-1)
                   for i in range(pool5.shape[1] - 1) for j in range(pool5.shape[2] - 1)]
        scores = head(model, torch.stack(windows)).mean(0)
        probs.append(torch.softmax(scores, 0))
    return (probs[0] + probs[1]) / 2


def multicrop_reference(model, x, crop=64):
    """5 x 5 crops from corner to corner, each also flipped (Caffe's oversampling)."""
    h, w = x.shape[-2:]
    tops = [round(i * (h - crop) / 4) for i in range(5)]
    lefts = [round(i * (w - crop) / 4) for i in range(5)]
    views = []
    for t in tops:
        for left in lefts:
            window = x[:, :, t:t + crop, left:left + crop]
            views += [window, window.flip(-1)]
    probs = torch.softmax(head(model, model.features(torch.cat(views)).flatten(1)), 1)
    assert len(probs) == 50
    return probs.mean(0)


@pytest.fixture(scope="module")
def reference(setup):
    root, _, models, _, _ = setup
    files = sorted((c, p) for c in CLASSES for p in (root / "val" / c).iterdir())
    models64 = [copy.deepcopy(m).double() for m in models]
    post = {}
    with torch.no_grad():
        for n, model in enumerate(models64):
            for q in SCALES:
                xs = [normalise(load_scaled(p, q), model) for _, p in files]
                post[(n, "dense", q)] = torch.stack([dense_reference(model, x, ROUNDING[n])
                                                     for x in xs])
                post[(n, "multi-crop", q)] = torch.stack([multicrop_reference(model, x)
                                                          for x in xs])
    labels = torch.tensor([NET_CLASSES.index(c) for c, _ in files])
    return post, labels


def error(probs, labels, k):
    top = probs.topk(k, dim=1).indices
    return 100 * (1 - (top == labels[:, None]).any(1).double().mean().item())


def test_posteriors_match_the_float64_reference(setup, reference):
    post, labels = reference
    pred = setup[4]
    for key, expected in post.items():
        np.testing.assert_allclose(pred.posteriors[key], expected.numpy(), rtol=1e-4, atol=1e-6)
    assert all(np.array_equal(lab, labels.numpy()) for lab in pred.labels)


@pytest.mark.parametrize("method", ["dense", "multi-crop", COMBINED])
def test_errors_per_net_scale_and_ensemble(setup, reference, method):
    post, labels = reference
    rows = setup[3]
    parts = ["dense", "multi-crop"] if method == COMBINED else [method]

    def expected(nets, scales):
        probs = torch.stack([post[(n, m, q)] for n in nets for m in parts for q in scales])
        return error(probs.mean(0), labels, 1), error(probs.mean(0), labels, 5)

    cases = [([0], [64]), ([0], [96]), ([0], SCALES), ([1], SCALES), ([0, 1], SCALES)]
    names = list(dict.fromkeys(r["net"] for r in rows))  # net 1, net 2, their ensemble
    assert len(names) == 3 and names[2] == f"{names[0]} & {names[1]}"
    for nets, scales in cases:
        name = names[2] if len(nets) == 2 else names[nets[0]]
        [row] = [r for r in rows if r["net"] == name and r["method"] == method
                 and r["test_scales"] == scales]
        top1, top5 = expected(nets, scales)
        assert row["top1_err"] == pytest.approx(top1) and row["top5_err"] == pytest.approx(top5)
        assert row["images"] == 8
        assert row["pool_rounding"] == "/".join(sorted({ROUNDING[n] for n in nets}))


def test_table_layout(setup):
    text = format_table(setup[3])
    assert "top-1 val. error (%)" in text and "top-5 val. error (%)" in text
    assert "multi-crop & dense" in text and " & A (" in text  # the ensemble row
    assert "64,96" in text


def test_cli_prints_the_table(setup):
    root, paths, *_ = setup
    result = run_cli(["eval-backbone", "--data", root, "--weights", paths[0].parent,
                      "--scales", "64", "--method", "dense", "--workers", "0", "--quiet",
                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "dense" in result.output and "multi-crop" not in result.output


def test_cli_ensemble_with_several_weights_after_one_option(setup):
    root, paths, *_ = setup
    result = run_cli(["eval-backbone", "--data", root, "--weights", paths[0], paths[1],
                      "--scales", "64", "--method", "dense", "--workers", "0", "--quiet",
                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    ensemble = [line for line in result.output.splitlines() if " & " in line]
    assert len(ensemble) == 1 and "dense" in ensemble[0]


def test_cli_scale_below_crop_is_a_clear_error(setup):
    root, paths, *_ = setup
    result = run_cli(["eval-backbone", "--data", root / "val", "--weights", paths[0],
                      "--scales", "32", "--workers", "0", "--quiet", "--device", "cpu"])
    assert result.exit_code == 2 and "at least 64" in result.output
