"""The bf16 CPU fast path (issue 20): descriptors within cosine 0.9999 of fp32 (narrow net and
full VGG16), fp32 unchanged, the CPU's bf16 support in doctor/info, extract's one-time note,
and fp32/bf16 caches never mixed."""
import copy

import h5py
import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from conftest import make_tiny_backbone
from helpers_datasets import make_folder_dataset
from helpers_features import reference_dense

from vggfeat.cli import cli
from vggfeat.features.descriptor import DescriptorConfig, describe
from vggfeat.features.engine import Engine
from vggfeat.models import build_backbone
from vggfeat.models.cpu import CpuDense, packed_ops_available
from vggfeat.models.cpu_bf16 import (
    FEW_HUNDRED_IMAGES,
    Bf16Support,
    bf16_hint,
    bf16_support,
    cpu_flags,
    expected_gain,
)

# The bar for bf16 descriptors against fp32 (measured: 0.99998-0.99999).
MIN_COSINE = 0.9999
NATIVE = bf16_support().native
needs_packed = pytest.mark.skipif(not packed_ops_available(),
                                  reason="this PyTorch has no oneDNN packed convolutions")
needs_native = pytest.mark.skipif(not NATIVE, reason="this CPU has no bf16 instructions")


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")



def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double(), b.double()).min().item()


def descriptors(model, x, precision, dense):
    config = DescriptorConfig.from_model(model, (x.shape[-2],), precision=precision)
    with torch.inference_mode():
        return describe(model, x, config, dense)


@needs_packed
@pytest.mark.parametrize("layer", ["pool5", "fc6", "fc7", "fc8"])
def test_bf16_maps_of_a_narrow_net_are_close_to_float64(tiny, layer):
    torch.manual_seed(0)
    x = torch.rand(3, 3, 96, 80) * 2 - 1
    with torch.inference_mode():
        bf16 = CpuDense(tiny, precision="bf16")(x, layer)
        fp32 = CpuDense(tiny, precision="fp32")(x, layer)
        reference = (copy.deepcopy(tiny).double().dense(x.double(), layer) if layer == "fc8"
                     else reference_dense(tiny, x, layer))
    assert bf16.dtype == torch.float32 and bf16.shape == reference.shape  # handed back in fp32
    pooled = bf16.mean((2, 3)), reference.mean((2, 3))
    assert min_cosine(*pooled) >= MIN_COSINE
    assert (bf16 - fp32).abs().max() > 0  # it did compute in bf16
    np.testing.assert_allclose(fp32.double(), reference, rtol=1e-5, atol=1e-5)


@needs_packed
def test_bf16_folds_batch_norms_and_stays_close_to_float64():
    """VGG-A with batch norm (the demo's net), running statistics far from the identity."""
    model = make_tiny_backbone(arch="vgg11-bn")
    torch.manual_seed(2)
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.uniform_(0.5, 2.0)
    model.eval()
    x = torch.rand(3, 3, 96, 80)
    with torch.inference_mode():
        dense, exact = CpuDense(model, precision="bf16"), CpuDense(model, precision="fp32")
        bf16, fp32 = dense(x, "fc7"), exact(x, "fc7")
        reference = copy.deepcopy(model).double().dense(x.double(), "fc7")
    assert not any(isinstance(step, torch.nn.BatchNorm2d) for step in dense.trunk.steps)
    assert min_cosine(bf16.mean((2, 3)), reference.mean((2, 3))) >= MIN_COSINE
    # fp32 folds nothing: the model's own batch norms, as exact as before
    assert sum(isinstance(step, torch.nn.BatchNorm2d) for step in exact.trunk.steps) == 8
    np.testing.assert_allclose(fp32.double(), reference, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # ~9 s: two full-size VGG16 initialisations and four passes
@needs_packed
def test_bf16_descriptors_of_full_vgg16_within_the_stated_cosine():
    """torchvision's own initialisation (its state dict), one image and its flip at Q=224."""
    torch.manual_seed(0)
    model = build_backbone("vgg16")
    model.load_state_dict(torchvision.models.vgg16().state_dict())
    model.eval()
    x = torch.rand(1, 3, 224, 256)
    fp32 = descriptors(model, x, "fp32", CpuDense(model, precision="fp32"))
    bf16 = descriptors(model, x, "bf16", CpuDense(model, precision="bf16"))
    assert min_cosine(bf16, fp32) >= MIN_COSINE
    assert not torch.equal(bf16, fp32)


@needs_native
def test_engine_runs_bf16_on_the_fast_path_and_fp32_exactly(tiny):
    config = {p: DescriptorConfig.from_model(tiny, (64, 96), precision=p)
              for p in ("fp32", "bf16")}
    engines = {p: Engine(tiny, c, device="cpu") for p, c in config.items()}
    assert isinstance(engines["bf16"].dense, CpuDense) and engines["bf16"].dense.precision == "bf16"
    assert engines["fp32"].dense.precision == "fp32"
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 80)
    fp32 = engines["fp32"].describe_batch(x)
    bf16 = engines["bf16"].describe_batch(x)
    with torch.inference_mode():
        exact = describe(copy.deepcopy(tiny).double(), x.double(), config["fp32"]).float()
    np.testing.assert_allclose(fp32, exact, rtol=1e-5, atol=1e-6)  # fp32: as exact as before
    assert min_cosine(bf16, fp32) >= MIN_COSINE and not torch.equal(bf16, fp32)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    line = "flags\t\t: fpu sse avx2 avx512f avx512_bf16 {}\n"
    cpuinfo.write_text("processor\t: 0\n" + line.format("amx_bf16 amx_tile amx_int8"))
    amx = bf16_support(cpuinfo)
    assert amx.avx512_bf16 and amx.amx_bf16 and amx.native
    cpuinfo.write_text("vendor_id\t: AuthenticAMD\n" + line.format(""))
    zen4 = bf16_support(cpuinfo)
    assert zen4.native and not zen4.amx_bf16 and zen4.describe() == "AVX512_BF16"
    assert zen4.faster_than_fp32
    cpuinfo.write_text("vendor_id\t: GenuineIntel\n" + line.format(""))
    cooper_lake = bf16_support(cpuinfo)  # measured slower than fp32 on Intel without AMX
    assert cooper_lake.native and not cooper_lake.faster_than_fp32
    assert "slower than fp32" in expected_gain(cooper_lake)
    cpuinfo.write_text("flags\t: fpu sse avx2 fma\n")
    assert not bf16_support(cpuinfo).native and bf16_support(cpuinfo).describe() == "none"
    missing = bf16_support(tmp_path / "absent")
    assert not missing.known and not missing.native and "unknown" in missing.describe()
    assert cpu_flags(tmp_path / "absent") is None


def test_amx_capped_by_onednn_is_said(monkeypatch):
    capped = Bf16Support(True, True, isa_cap="AVX512_CORE_BF16")
    assert not capped.uses_amx and "AMX unused: ONEDNN_MAX_CPU_ISA" in capped.describe()
    assert Bf16Support(True, True, isa_cap="AVX512_CORE_AMX").uses_amx


def test_hint_only_for_fp32_on_the_cpu_past_a_few_hundred_images():
    amx, none = Bf16Support(True, True), Bf16Support(False, False)
    intel_avx512_bf16, zen4 = Bf16Support(True, False), Bf16Support(True, False, amd=True)
    many = FEW_HUNDRED_IMAGES + 1
    assert "--precision bf16" in bf16_hint("fp32", "cpu", many, amx)
    assert "AMX-BF16" in bf16_hint("fp32", "cpu", many, amx)
    assert "AVX512_BF16" in bf16_hint("fp32", "cpu", many, zen4)
    for args in (("fp32", "cpu", FEW_HUNDRED_IMAGES, amx), ("bf16", "cpu", many, amx),
                 ("fp32", "cuda", many, amx), ("fp32", "cpu", many, none),
                 ("fp32", "cpu", many, intel_avx512_bf16)):
        assert bf16_hint(*args) is None, args


def test_info_and_doctor_report_the_cpus_bf16_support():
    support = bf16_support()
    info = CliRunner().invoke(cli, ["info"])
    assert info.exit_code == 0
    line = next(row for row in info.output.splitlines() if "cpu bf16:" in row)
    assert support.describe() in line and "--precision bf16" in line
    doctor = CliRunner().invoke(cli, ["doctor", "--device", "cpu"])
    line = next(row for row in doctor.output.splitlines() if "cpu bf16:" in row)
    assert f"bf16 instructions: {support.describe()}" in line
    if support.native and packed_ops_available():
        assert "x as fast as fp32 here" in line  # measured on this CPU


@pytest.mark.skipif(not bf16_support().faster_than_fp32,
                    reason="no note where bf16 is not expected to beat fp32")
def test_extract_notes_bf16_once_past_a_few_hundred_images(tiny_weights, tmp_path):
    root = tmp_path / "data"
    make_folder_dataset(root, classes=("a", "b", "c"), per_class=FEW_HUNDRED_IMAGES // 3 + 1,
                        size=(16, 16))
    result = CliRunner().invoke(cli, ["extract", "--dataset", "folder", "--root", str(root),
                                      "--weights", str(tiny_weights), "--scales", "64",
                                      "--no-flip", "--device", "cpu",
                                      "--out", str(tmp_path / "f.h5")])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("--precision bf16") == 1
    assert "--precision bf16" not in result.stdout  # a note: stderr only


def test_fp32_and_bf16_caches_never_mix(tiny_weights, tmp_path):
    root = tmp_path / "data"
    make_folder_dataset(root, classes=("a", "b"), per_class=2)
    out = tmp_path / "f.h5"
    common = ["extract", "--dataset", "folder", "--root", str(root), "--weights",
              str(tiny_weights), "--scales", "64", "--device", "cpu", "--out", str(out),
              "--quiet"]
    assert CliRunner().invoke(cli, [*common, "--precision", "fp32"]).exit_code == 0
    before = out.read_bytes()
    refused = CliRunner().invoke(cli, [*common, "--precision", "bf16"])
    assert refused.exit_code == 2
    assert "precision: file has 'fp32', this run 'bf16'" in refused.stderr
    assert out.read_bytes() == before  # nothing of bf16 written into the fp32 cache
    assert CliRunner().invoke(cli, [*common, "--precision", "bf16", "--overwrite"]).exit_code == 0
    with h5py.File(out) as f:
        assert f.attrs["precision"] == "bf16"
