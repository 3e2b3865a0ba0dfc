"""vggfeat.features.engine: batching by exact shape, invariance, bounded memory, bad images."""
import numpy as np
import pytest
import torch
from helpers_features import random_rgb, write_bad_images, write_png

from vggfeat.features.descriptor import DescriptorConfig
from vggfeat.features.engine import Engine, ShapeBatcher

SCALES = (64, 96)


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")



@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """12 images in 5 shapes (some share a resized shape, some do not)."""
    folder = tmp_path_factory.mktemp("images")
    shapes = [(48, 64), (48, 64), (60, 80), (64, 48), (50, 50), (48, 64), (75, 100),
              (64, 48), (33, 70), (48, 64), (50, 50), (60, 80)]
    return [write_png(folder / f"{k:02d}.png", random_rgb(h, w, seed=k))
            for k, (h, w) in enumerate(shapes)]


def run(model, items, precision="fp32", **options):
    config = DescriptorConfig.from_model(model, SCALES, precision=precision)
    engine = Engine(model, config, device="cpu", **options)
    return {r.index: r for r in engine.run(items)}


def test_batch_size_worker_and_order_invariance(tiny, images):
    items = list(enumerate(images))
    base = run(tiny, items, batch_size=1)
    variants = [
        run(tiny, items, batch_size=5),
        run(tiny, items, batch_size=32, workers=2),
        run(tiny, items[::-1], batch_size=3),
        run(tiny, items, batch_size=32, max_pixels=64 * 86 * 2),  # about one image a batch
        run(tiny, items, channels_last=True, fast_cpu=False),  # eager model.dense
        run(tiny, items, workers=1, resize_on_device=True),  # what CUDA does by default
    ]
    for results in variants:
        assert sorted(results) == sorted(base)
        for index, result in base.items():
            np.testing.assert_allclose(results[index].descriptor, result.descriptor,
                                       rtol=1e-5, atol=1e-6)


def test_an_image_alone_equals_it_in_a_crowd(tiny, images):
    crowd = run(tiny, list(enumerate(images)), batch_size=16)
    alone = run(tiny, [(7, images[7])])
    np.testing.assert_allclose(alone[7].descriptor, crowd[7].descriptor, rtol=1e-5, atol=1e-6)


def test_bad_images_become_errors_and_the_rest_go_on(tiny, images, tmp_path):
    bad = write_bad_images(tmp_path)
    items = [(0, images[0]), *((k + 1, tmp_path / name) for k, name in enumerate(bad)),
             (99, images[1])]
    results = run(tiny, items, batch_size=4)
    assert results[0].descriptor is not None and results[99].descriptor is not None
    for k, word in enumerate(bad.values()):
        assert results[k + 1].descriptor is None and word in results[k + 1].error


def test_batches_hold_one_shape_within_budget():
    batcher = ShapeBatcher(batch_size=4, max_pixels=3 * 10 * 10 * 2, copies=2)
    rng = np.random.default_rng(0)
    shapes = [(10, 10), (10, 12), (12, 10)]
    batches = []
    for index in range(40):
        h, w = shapes[rng.integers(3)]
        batches += list(batcher.add(index, 0, torch.zeros(3, h, w)))
        assert batcher.pending <= 4 * batcher.max_pixels // 2  # bounded while filling
    batches += list(batcher.flush())
    assert sorted(i for b in batches for i, _, _ in b) == list(range(40))
    for batch in batches:
        assert len({tuple(image.shape) for _, _, image in batch}) == 1
        h, w = batch[0][2].shape[-2:]
        assert len(batch) * h * w * 2 <= batcher.max_pixels or len(batch) == 1
        assert len(batch) <= 4
    assert not batcher.buckets and batcher.pending == 0


class OutOfMemoryAbove:
    """A real backbone that raises CUDA's out-of-memory error for batches above `limit`
    (what a GPU does when a batch does not fit); used to exercise the halving path on CPU."""

    def __init__(self, model, limit):
        self.model, self.limit, self.sizes = model, limit, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def to(self, *args, **kwargs):
        self.model = self.model.to(*args, **kwargs)
        return self

    def eval(self):
        return self

    def dense(self, x, layer):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model.dense(x, layer)


def test_out_of_memory_halves_the_batch(tiny, images):
    same_shape = [(k, images[k]) for k in (0, 1, 5, 9)]  # four 48 x 64 images
    limited = OutOfMemoryAbove(tiny, limit=4)  # image + flip: two images per pass at most
    results = run(limited, same_shape, batch_size=4, fast_cpu=False)
    expected = run(tiny, same_shape, batch_size=1)
    # 4 images + flips refused, then two halves; the halved budget holds for later batches.
    assert limited.sizes[:3] == [8, 4, 4] and max(limited.sizes[3:]) <= 4
    for index, result in expected.items():
        np.testing.assert_allclose(results[index].descriptor, result.descriptor, rtol=1e-5,
                                   atol=1e-6)


def test_bf16_autocast_is_close_to_fp32(tiny, images):
    items = list(enumerate(images[:3]))
    fp32, bf16 = run(tiny, items), run(tiny, items, precision="bf16")
    for index, result in fp32.items():
        assert bf16[index].descriptor.dtype == np.float32  # pooled and stored in fp32
        scale = np.abs(result.descriptor).max()
        np.testing.assert_allclose(bf16[index].descriptor, result.descriptor, atol=0.05 * scale)
        assert not np.array_equal(bf16[index].descriptor, result.descriptor)


@pytest.mark.parametrize("backend", ["packed", "blocked", "torchscript", "eager"])
@pytest.mark.parametrize("arch, rounding", [("vgg11", "ceil"), ("vgg11-lrn", "floor"),
                                            ("vgg11-bn", "ceil"), ("vgg16-1x1", "floor")])
def test_cpu_trunk_backends_equal_float64(backend, arch, rounding):
    """Every CPU trunk equals the float64 eager net, pools' ceil_mode included (an odd
    size, where ceil and floor pooling give different map sizes)."""
    from conftest import make_tiny_backbone

    from vggfeat.models.cpu import CpuDense

    model = make_tiny_backbone(arch=arch, pool_rounding=rounding)
    if arch.endswith("-bn"):  # non-trivial running statistics
        for layer in model.features:
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.1, 0.1)
                layer.running_var.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 70, 99)
    with torch.no_grad():
        reference = model.double().dense(x.double(), "fc7").float()
        model.float()
        dense = CpuDense(model, backend)
        with torch.inference_mode():
            out = dense(x, "fc7")
    assert dense.backend == backend
    assert out.shape == reference.shape == (2, 512, model.dense_size(70), model.dense_size(99))
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_the_engine_uses_a_prepacked_trunk_on_this_pytorch(tiny, monkeypatch):
    """Fails if a PyTorch upgrade removes the oneDNN operators of either fast CPU path (the
    engine would silently fall back to the slower eager trunk); the path follows the CPU's
    vector code (AVX-512: packed channels_last, below: blocked tensors)."""
    from vggfeat.models.cpu import (
        BlockedTrunk,
        PackedTrunk,
        blocked_ops_available,
        default_backend,
        packed_ops_available,
    )

    assert packed_ops_available() and blocked_ops_available()
    monkeypatch.delenv("VGGFEAT_CPU_TRUNK", raising=False)
    config = DescriptorConfig.from_model(tiny, SCALES)
    engine = Engine(tiny, config, device="cpu")
    expected = PackedTrunk if default_backend() == "packed" else BlockedTrunk
    assert isinstance(engine.dense.trunk, expected)
    for capability, backend in (("AVX512", "packed"), ("AVX2", "blocked"), ("DEFAULT", "blocked")):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert default_backend() == backend


def test_unknown_cpu_backend_is_named(tiny, monkeypatch):
    from vggfeat.models.cpu import CpuDense

    monkeypatch.setenv("VGGFEAT_CPU_TRUNK", "fast")
    with pytest.raises(ValueError, match="VGGFEAT_CPU_TRUNK"):
        CpuDense(tiny)


# -- the CUDA data path, exercised on the CPU (device="cpu": torchvision's libjpeg) -------


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """JPEGs and non-JPEGs in several shapes, a rotated and a CMYK JPEG, a truncated one."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("jpegs")
    paths = []
    for k, (h, w) in enumerate([(48, 64), (64, 48), (60, 80), (48, 64), (50, 70)]):
        path = folder / f"{k}.jpg"
        Image.fromarray(random_rgb(h, w, seed=k)).save(path, quality=95)
        paths.append(path)
    paths.append(write_png(folder / "5.png", random_rgb(48, 64, seed=5)))
    rotated = Image.fromarray(random_rgb(48, 64, seed=6))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rotated.save(folder / "6.jpg", exif=exif)
    Image.fromarray(random_rgb(64, 48, seed=7)).convert("CMYK").save(folder / "7.jpg")
    Image.fromarray(random_rgb(48, 64, seed=8)).convert("L").save(folder / "8.jpg")
    good = (folder / "0.jpg").read_bytes()
    (folder / "9.jpg").write_bytes(good[: len(good) // 2])  # truncated
    return paths + [folder / f"{k}.jpg" for k in (6, 7, 8, 9)]


def test_decode_route_picks_the_device_for_plain_jpegs_only(jpegs):
    from vggfeat.features.engine import decode_route

    routes = [decode_route(p, "cpu") for p in jpegs]
    # plain colour JPEGs and the grayscale one on the device; PNG, rotated, CMYK on the CPU;
    # the truncated file's header is fine: the device decoder fails and the CPU reports it.
    assert routes == ["device"] * 5 + ["cpu", "cpu", "cpu", "device", "device"]
    assert decode_route(torch.zeros(3, 8, 8), "cpu") == "cpu"


def test_device_decoding_gives_the_cpu_descriptors(tiny, jpegs):
    """Same descriptors through torchvision's decoder + prefetch thread as through PIL in
    DataLoader workers; the truncated file is a bad image either way."""
    items = list(enumerate(jpegs))
    host = run(tiny, items, batch_size=4, decode_on_device=False)
    device = run(tiny, items, batch_size=4, decode_on_device=True, prefetch=1)
    assert sorted(device) == sorted(host) == list(range(len(jpegs)))
    for index, result in host.items():
        if result.error:
            assert device[index].error == result.error
            continue
        np.testing.assert_allclose(device[index].descriptor, result.descriptor,
                                   rtol=1e-5, atol=1e-6)
    assert host[len(jpegs) - 1].error and "truncated" in host[len(jpegs) - 1].error


def test_device_decoding_crops_boxes_like_the_cpu(jpegs):
    from types import SimpleNamespace

    from vggfeat.data.scaled import load_image
    from vggfeat.features.engine import decode_on

    samples = [SimpleNamespace(path=jpegs[0], box=(5, 3, 40, 30)),
               SimpleNamespace(path=jpegs[0], box=(70, 0, 80, 10))]
    cropped, empty = decode_on(samples, torch.device("cpu"))
    torch.testing.assert_close(cropped, load_image(samples[0]), atol=1 / 255, rtol=0)
    assert "empty" in empty


def test_prefetcher_keeps_order_runs_ahead_and_raises():
    from vggfeat.features.engine import Prefetcher

    produced = []

    def source(n, fail_at=None):
        for k in range(n):
            if k == fail_at:
                raise OSError("disk gone")
            produced.append(k)
            yield [torch.full((2,), float(k))]

    assert [int(item[0][0]) for item in Prefetcher(source(6), depth=2)] == list(range(6))
    produced.clear()
    fetch = iter(Prefetcher(source(100), depth=3))
    next(fetch)
    for _ in range(100):  # the thread fills the queue while the consumer holds item 0
        if len(produced) >= 4:
            break
        import time
        time.sleep(0.01)
    assert 4 <= len(produced) <= 5  # 1 consumed + 3 queued (+ 1 waiting to be put)
    fetch.close()  # stopping early ends the thread
    with pytest.raises(OSError, match="disk gone"):
        list(Prefetcher(source(5, fail_at=3)))


def test_first_result_time_is_written_once(tiny, images, tmp_path, monkeypatch):
    import time

    stamp = tmp_path / "first"
    monkeypatch.setenv("VGGFEAT_FIRST_RESULT_FILE", str(stamp))
    before = time.time()
    run(tiny, list(enumerate(images[:3])))
    first = float(stamp.read_text())
    assert before <= first <= time.time()
    run(tiny, list(enumerate(images[:3])))  # an existing file is never overwritten
    assert float(stamp.read_text()) == first


def test_cpu_dense_split_over_threads_equals_one_call(tiny):
    """A batch split over worker threads (one intra-op thread each) gives the same maps as
    one call, restores torch's thread count, and keeps the caller's inference mode."""
    from vggfeat.models.cpu import CpuDense

    x = torch.rand(5, 3, 70, 99)
    threads = torch.get_num_threads()
    with torch.inference_mode():
        whole = CpuDense(tiny, workers=1)(x, "fc7")
        split = CpuDense(tiny, workers=3)(x, "fc7")
    assert torch.get_num_threads() == threads
    assert split.is_inference()
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert not CpuDense(tiny, workers=2)(x[:2], "pool5").requires_grad
