"""torchvision's CNN families through vggfeat's dense engine and cache (issue 18, Backbones).

Nets are randomly initialised and saved with torch.save(model.state_dict()), as torchvision
releases them; nothing is downloaded (`--download` is tested against a file:// URL). The
descriptor is checked against torchvision's own module run in float64 on the same rescaled
image (the resize is the independent numpy one of helpers_features).
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers_features import random_rgb, read_cache, reference_resize, write_png

from vggfeat.cli import cli
from vggfeat.features.descriptor import DescriptorConfig
from vggfeat.features.engine import Engine
from vggfeat.features.pipeline import extract_to_cache
from vggfeat.models import WeightsError, load_backbone, save_backbone, torchvision_load
from vggfeat.models.backbone import check_backbone
from vggfeat.models.torchvision_nets import build_torchvision, torchvision_model, weights_entry
from vggfeat.utils.threads import torch_threads

# The smallest member of each family; the heavier ones run in the slow suite.
FAST = ["resnet18", "mobilenet_v3_small", "squeezenet1_1"]
SLOW = ["shufflenet_v2_x0_5", "mnasnet0_5", "alexnet", "convnext_tiny", "efficientnet_b0",
        "densenet121", "regnet_y_400mf", "googlenet", "inception_v3"]
FAMILIES = [*FAST, *[pytest.param(a, marks=pytest.mark.slow) for a in SLOW]]


@pytest.fixture(autouse=True, scope="module")
def _two_threads():
    with torch_threads(2):
        yield


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub folder ($TORCH_HOME/hub/checkpoints), forgotten afterwards."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torchvision_load.release_files.cache_clear()
    yield tmp_path / "torch" / "hub" / "checkpoints"
    torchvision_load.release_files.cache_clear()


def random_net(arch: str, seed: int = 0):
    """torchvision's random initialisation, batch norm statistics then set from one batch of
    noise (as training would set them): without that, deep nets with fresh statistics
    (EfficientNet-B0) pass almost nothing to their last layer (pooled values ~1e-14)."""
    torch.manual_seed(seed)
    model = build_torchvision(arch)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = None  # a cumulative average: one batch sets the statistics
        norm.reset_running_stats()
    if norms:
        side = model.meta["crop_size"]
        with torch.no_grad():
            model.train()(torch.randn(2, 3, side, side))
    return model.eval()


def saved_state_dict(arch: str, path, seed: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_net(arch, seed).state_dict(), path)
    return path


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- every family through the engine and the cache --------------------------------------


@pytest.mark.parametrize("arch", FAMILIES)
def test_each_family_extracts_into_a_cache(arch, tmp_path):
    weights = saved_state_dict(arch, tmp_path / f"{arch}.pth")
    images = [write_png(tmp_path / f"{k}.png", random_rgb(40 + 9 * k, 53, seed=k))
              for k in range(2)]
    model = load_backbone(weights, arch=arch)
    check_backbone(model)
    crop = model.meta["crop_size"]
    summary = extract_to_cache(images, tmp_path / "out.h5", weights=weights, arch=arch,
                               scales=(crop,), device="cpu", progress=False)
    assert summary.complete and summary.computed == 2
    stored = read_cache(tmp_path / "out.h5")
    rows = stored["descriptors"]
    assert rows.shape == (2, 1, model.feature_dim())
    assert np.isfinite(rows).all() and np.abs(rows[0] - rows[1]).max() > 0
    config = json.loads(stored["attrs"]["config"])
    assert config["arch"] == arch and config["layer"] == model.default_layer
    assert config["preprocessing"]["mean"] == [0.485, 0.456, 0.406]  # torchvision's entry


# -- the descriptor equals torchvision's own module in float64 ---------------------------


def torchvision_pooled(model, x: torch.Tensor) -> torch.Tensor:
    """torchvision's module (a float64 copy holding the same weights) up to what its
    classifier receives: its forward with the classifier replaced by the identity."""
    net = torchvision_model(model.arch, model.meta["num_classes"], init=False)
    net.load_state_dict(model.state_dict())
    head = "fc" if hasattr(net, "fc") else "classifier"
    setattr(net, head, torch.nn.Flatten())  # ConvNeXt's pool keeps (N, C, 1, 1)
    return net.double().eval()(x)


@pytest.mark.parametrize("arch", ["resnet18", *[pytest.param(arch, marks=pytest.mark.slow)
                                               for arch in ("convnext_tiny", "efficientnet_b0")]])
def test_descriptor_equals_float64_torchvision(arch, tmp_path):
    model = random_net(arch, seed=3)
    pixels = random_rgb(45, 62, seed=4)  # upscaled to 224 x 308: a map wider than high
    config = DescriptorConfig.from_model(model, (224,))
    (result,) = Engine(model, config, device="cpu").run([(0, write_png(tmp_path / "a.png",
                                                                       pixels))])
    pre = model.meta["preprocessing"]
    x = (reference_resize(pixels, 224) - np.array(pre["mean"])[:, None, None]) \
        / np.array(pre["std"])[:, None, None]
    x = torch.from_numpy(np.ascontiguousarray(x))[None]
    with torch.no_grad():
        expected = torchvision_pooled(model, torch.cat([x, x.flip(-1)])).mean(0).numpy()
    assert np.abs(expected).max() > 1e-3
    # Tolerance: float32 (the engine) against float64 through 18 to 80 layers: 2e-5 of the
    # largest value plus 1e-4 of each (measured: 6e-7, 6e-7 and 3e-6 of the largest value
    # for ResNet-18, ConvNeXt-Tiny and EfficientNet-B0).
    np.testing.assert_allclose(result.descriptor[0], expected, rtol=1e-4,
                               atol=2e-5 * np.abs(expected).max())


def test_logits_equal_torchvision_at_the_crop():
    model = random_net("resnet18", seed=5)
    net = torchvision_model("resnet18", init=False)
    net.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net.eval()(x), rtol=1e-5, atol=1e-5)


# -- layers ------------------------------------------------------------------------------


def test_several_layers_in_one_pass_equal_one_call_each():
    model = random_net("resnet18", seed=1)
    x = torch.randn(1, 3, 224, 250)
    with torch.no_grad():
        maps = model.dense_layers(x, ["layer3", "layer4.1", "layer4", "bn1"])
        for name, value in maps.items():
            torch.testing.assert_close(value, model.dense(x, name), rtol=0, atol=0)
        assert maps["bn1"].min() < 0  # kept before the in-place ReLU that follows it
    torch.testing.assert_close(maps["layer4"], maps["layer4.1"])
    assert model.dense_size(250) == maps["layer4"].shape[-1] == 8
    assert model.feature_dim("layer3") == 256


def test_alexnet_runs_fc6_fc7_densely_as_vgg():
    model = random_net("alexnet", seed=2)
    assert model.default_layer == "fc7"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        fc7 = model.dense(x, "fc7")
        features = model.dense(x, "features")
        c = model.classifier
        reference = c[5](c[4](c[2](c[1](torch.flatten(model.avgpool(features), 1)))))
    assert fc7.shape == (1, 4096, 1, 1)
    torch.testing.assert_close(fc7[:, :, 0, 0], reference, rtol=1e-5, atol=1e-5)
    assert model.dense_size(288) == 3  # features 8 wide: three 6-wide windows


def test_a_wrong_layer_is_refused_with_the_names(tmp_path):
    model = random_net("resnet18")
    with pytest.raises(ValueError, match=r"'layer9' is not a layer of resnet18.*layer4"):
        DescriptorConfig.from_model(model, (224,), layer="layer9")


# -- loading -----------------------------------------------------------------------------


def test_state_dict_and_vggfeat_checkpoint_load(tmp_path):
    weights = saved_state_dict("resnet18", tmp_path / "mine.pth", seed=7)
    model = load_backbone(weights, arch="resnet18")
    assert model.meta["arch"] == "resnet18" and model.meta["sha256"] == sha256(weights)
    assert model.meta["crop_size"] == 224 and model.meta["pool_rounding"] == "floor"
    original = torch.load(weights, weights_only=True)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, original[key])
    save_backbone(model, tmp_path / "ours.pth")
    again = load_backbone(tmp_path / "ours.pth")  # the checkpoint says its architecture
    assert again.meta["arch"] == "resnet18"
    with pytest.raises(WeightsError, match=r"not a VGG state dict.*pass --arch"):
        load_backbone(weights)  # a bare state dict does not say it is a ResNet
    with pytest.raises(WeightsError, match=r"does not fit resnet34: missing: layer1\.2"):
        load_backbone(weights, arch="resnet34")


def test_release_name_in_torch_hub_folder_is_hash_checked(hub, monkeypatch):
    entry = weights_entry("resnet18")
    release = hub / entry.url.rsplit("/", 1)[-1]  # resnet18-f37072fd.pth
    saved_state_dict("resnet18", release)
    with pytest.raises(WeightsError, match=r"named like torchvision's release.*sha256"):
        load_backbone("resnet18")
    # the same file under a release name that its hash fits is taken, by either name
    digest = sha256(release)
    renamed = release.rename(hub / f"resnet18-{digest[:8]}.pth")
    monkeypatch.setattr(entry.value, "url", f"https://example.invalid/{renamed.name}")
    torchvision_load.release_files.cache_clear()
    for name in ("resnet18", renamed.name):
        model = load_backbone(name)
        assert model.meta["arch"] == "resnet18" and model.meta["sha256"] == digest
        assert len(model.meta["classes"]) == 1000


def test_missing_release_says_how_to_get_it(hub):
    with pytest.raises(WeightsError, match=r"not found.*--download.*resnet18-f37072fd\.pth"):
        load_backbone("resnet18")


@pytest.mark.parametrize("arch", ["vit_b_16", "swin_t", "maxvit_t"])
def test_transformers_are_refused_naming_the_families_that_work(arch, tmp_path):
    weights = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(1)}, weights)
    with pytest.raises(WeightsError, match=r"vision transformers.*ResNet.*ConvNeXt.*VGG"):
        load_backbone(weights, arch=arch)


# -- --download, without a network ------------------------------------------------------


def serve_release(tmp_path, monkeypatch, digest_prefix=None):
    """A random resnet18 state dict behind a file:// URL named like a release."""
    served = saved_state_dict("resnet18", tmp_path / "server" / "resnet18.pth", seed=9)
    name = f"resnet18-{digest_prefix or sha256(served)[:8]}.pth"
    served = served.rename(served.with_name(name))
    monkeypatch.setattr(weights_entry("resnet18").value, "url", served.as_uri())
    torchvision_load.release_files.cache_clear()
    return served


def test_download_from_a_local_url_through_the_cli(hub, tmp_path, monkeypatch):
    served = serve_release(tmp_path, monkeypatch)
    for k in range(2):
        write_png(tmp_path / "photos" / f"c{k}" / "a.png", random_rgb(30, 40, seed=k))
    out = tmp_path / "out.h5"
    args = ["extract", "--dataset", "folder", "--root", str(tmp_path / "photos"), "--arch",
            "resnet18", "--weights", "resnet18", "--scales", "224", "--device", "cpu",
            "--out", str(out), "-q"]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 2 and "--download" in refused.output
    result = CliRunner().invoke(cli, [*args, "--download"])
    assert result.exit_code == 0, result.output
    assert f"downloaded {served.as_uri()} to {hub / served.name}" in result.output
    assert sha256(hub / served.name) == sha256(served)
    assert read_cache(out)["descriptors"].shape == (2, 1, 512)


def test_download_with_a_wrong_hash_keeps_nothing(hub, tmp_path, monkeypatch):
    serve_release(tmp_path, monkeypatch, digest_prefix="0123abcd")
    with pytest.raises(WeightsError, match=r"not torchvision's release.*nothing was kept"):
        load_backbone("resnet18", download=True)
    assert not any(hub.iterdir())


def test_feature_extractor_takes_an_arch(tmp_path):
    from vggfeat.features.api import FeatureExtractor

    weights = saved_state_dict("squeezenet1_1", tmp_path / "squeeze.pth", seed=4)
    image = write_png(tmp_path / "a.png", random_rgb(30, 41, seed=1))
    extractor = FeatureExtractor(weights=weights, arch="squeezenet1_1", scales=(224,),
                                 device="cpu")
    rows = extractor.fit_transform([image])
    assert rows.shape == (1, 512) and extractor.config_.layer == "features"
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1, rtol=1e-5)


def test_folded_batch_norms_give_the_same_maps_and_leave_the_net_alone():
    """The engine's copy (vggfeat.models.inference): every conv -> batch norm pair folded,
    module names kept (any layer still readable), the caller's net unchanged."""
    from torch import nn

    from vggfeat.models.inference import inference_copy

    net = random_net("resnet18")
    with torch.no_grad():  # statistics far from 0/1, so that folding matters
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    copy = inference_copy(net, torch.device("cpu"))
    # all but bn1, whose input is a readable layer (conv1), are folded
    assert [n for n, m in copy.named_modules() if isinstance(m, nn.BatchNorm2d)] == ["bn1"]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 20
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    x = torch.rand(2, 3, 96, 128)
    with torch.inference_mode():
        want = net.eval().dense_layers(x, ["conv1", "layer2", "layer4"])
        got = copy.dense_layers(x.contiguous(memory_format=torch.channels_last),
                                ["conv1", "layer2", "layer4"])
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5 *
                                   want[name].abs().max().item())


@pytest.mark.parametrize("arch, layer, node", [
    ("resnet18", "layer3", "layer3"), ("resnet18", "layer2.1", "layer2.1"),
    pytest.param("efficientnet_b0", "features.5", "features.5", marks=pytest.mark.slow)])
@pytest.mark.parametrize("pool", ["avg", "max"])
def test_layer_descriptor_equals_float64_torchvision(arch, layer, node, pool, tmp_path):
    """An intermediate layer, pooled by mean or max, against torchvision's own module in
    float64, read with torchvision's create_feature_extractor (independent of vggfeat's
    stage runner and of the engine's folded batch norms)."""
    from torchvision.models.feature_extraction import create_feature_extractor

    model = random_net(arch, seed=5)
    pixels = random_rgb(40, 56, seed=6)
    config = DescriptorConfig.from_model(model, (224,), layer=layer, pool=pool)
    (result,) = Engine(model, config, device="cpu").run([(0, write_png(tmp_path / "a.png",
                                                                       pixels))])
    net = torchvision_model(model.arch, model.meta["num_classes"], init=False)
    net.load_state_dict(model.state_dict())
    extractor = create_feature_extractor(net.double().eval(), [node])
    pre = model.meta["preprocessing"]
    x = (reference_resize(pixels, 224) - np.array(pre["mean"])[:, None, None]) \
        / np.array(pre["std"])[:, None, None]
    x = torch.from_numpy(np.ascontiguousarray(x))[None]
    with torch.no_grad():
        maps = extractor(torch.cat([x, x.flip(-1)]))[node]
    pooled = maps.mean((2, 3)) if pool == "avg" else maps.amax((2, 3))
    expected = pooled.mean(0).numpy()
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(result.descriptor[0], expected, rtol=1e-4,
                               atol=2e-5 * np.abs(expected).max())
