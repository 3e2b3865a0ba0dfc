"""`vggfeat doctor`: check what users most often get wrong, and say how to fix each problem.

Every check returns a `Check`: a status ("ok", "warn" or "fail"), what was found, and for
a problem the fix. Checks never raise for a user's mistake; they report it, so that one
broken thing does not hide the others. The CLI (`vggfeat.cli.doctor`) prints them and exits
non-zero when any check failed.

Checks:

- versions of Python, torch, torchvision and CUDA;
- the device that ``--device auto`` will use (and whether an asked-for device exists);
- on the CPU, its bf16 instructions (AVX512_BF16, AMX-BF16) and what ``--precision bf16``
  gives there (one VGG-sized convolution timed in fp32 and bf16: ~0.2 s);
- weights: found, safe, loadable, of the stated architecture;
- a dataset: ``--dataset/--root`` opens with the reader's layout checks, and a few of its
  images decode;
- a feature cache: complete, and made with the weights and the preprocessing given (the
  mean/std travel with the weights, so a cache made with other weights gives other numbers).
"""
from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path

OK, WARN, FAIL = "ok", "warn", "fail"
# How many images of a dataset are decoded to check that the files are readable.
SAMPLE_IMAGES = 5


@dataclass(frozen=True)
class Check:
    """The outcome of one check: `status` is "ok", "warn" or "fail"; `fix` says what to do."""

    name: str
    status: str
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == FAIL


def check_versions() -> list[Check]:
    """Python, torch, torchvision and CUDA versions; torchvision must import with torch."""
    import torch

    cuda = torch.version.cuda or "none"
    checks = [Check("python", OK, platform.python_version()),
              Check("torch", OK, f"{torch.__version__} (CUDA build: {cuda})")]
    try:
        import torchvision
    except Exception as error:  # a torch/torchvision mismatch fails at import, in many ways
        checks.append(Check(
            "torchvision", FAIL, f"cannot be imported: {error}",
            "install the torchvision release made for your torch (see the Makefile's "
            "TORCH_PINS, or https://pytorch.org/get-started/locally/), e.g. `make install`"))
    else:
        checks.append(Check("torchvision", OK, torchvision.__version__))
    return checks


def check_device(device: str = "auto") -> Check:
    """The device `device` resolves to, as vggfeat extract/train use it."""
    import torch

    from vggfeat.utils.devices import resolve_device

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        resolved = resolve_device(device)
    except RuntimeError as error:
        return Check("device", FAIL, f"{device!r} is not a device: {error}",
                     "use auto, cpu, cuda, cuda:N or mps")
    if resolved.type == "cuda":
        index = resolved.index or 0
        if index >= gpus:
            return Check("device", FAIL, f"{device} asked for, but torch sees {gpus} CUDA GPU(s)",
                         _no_cuda_fix(torch))
        return Check("device", OK, f"{resolved} ({torch.cuda.get_device_name(index)}); "
                                   f"{gpus} CUDA GPU(s) visible")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        return Check("device", FAIL, "mps asked for, but this torch has no MPS support",
                     "use --device cpu, or install a torch build for Apple silicon")
    if device == "auto" and resolved.type == "cpu":
        return Check("device", WARN, "cpu (no CUDA GPU or MPS found): fine for the demo and "
                                     "small data, slow for VOC/Caltech with full-size nets",
                     _no_cuda_fix(torch))
    return Check("device", OK, str(resolved))


def check_cpu_bf16() -> Check:
    """This CPU's bf16 instructions and ``--precision bf16``'s measured speed here."""
    from vggfeat.models.cpu_bf16 import bf16_support, expected_gain, measure_speedup

    support = bf16_support()
    detail = f"bf16 instructions: {support.describe()}"
    if not support.native:
        return Check("cpu bf16", OK, f"{detail}; {expected_gain(support)}; fp32 it is")
    try:
        speedup = measure_speedup()
    except RuntimeError as error:
        return Check("cpu bf16", OK, f"{detail}; no bf16 fast path here ({error})")
    verdict = ("worth it for large jobs" if speedup >= 1.2 else
               "no faster than fp32 here: keep fp32")
    return Check("cpu bf16", OK, f"{detail}; --precision bf16 ran a VGG convolution "
                                 f"{speedup:.1f}x as fast as fp32 here ({verdict}; descriptors "
                                 "within cosine 0.9999 of fp32, a separate cache)")


def _no_cuda_fix(torch) -> str:
    if torch.version.cuda is None:
        return ("this torch is a CPU-only build; for a GPU install a CUDA build of torch "
                "(https://pytorch.org/get-started/locally/)")
    return ("torch has CUDA but sees no GPU: check `nvidia-smi`, the driver version, and "
            "CUDA_VISIBLE_DEVICES")


def check_weights(weights: str, arch: str | None = None) -> tuple[Check, object]:
    """Whether `weights` (a file or torchvision name) is found and loads; returns the model."""
    from vggfeat.models import WeightsError, load_backbone

    try:
        model = load_backbone(weights, arch)
    except WeightsError as error:
        return Check("weights", FAIL, str(error), _weights_fix(str(weights))), None
    except ValueError as error:  # an unknown --arch
        return Check("weights", FAIL, str(error),
                     "give one of the architectures `vggfeat info` lists"), None
    meta = model.meta
    detail = (f"{meta['source']}: {meta['arch']}, width {meta.get('width', 1.0)}, crop "
              f"{meta.get('crop_size', 224)}, {meta.get('num_classes', '?')} classes, "
              f"preprocessing {json.dumps(meta['preprocessing'], sort_keys=True)}, "
              f"pooling rounded {model.pool_rounding}, sha256 {meta['sha256'][:12]}...")
    return Check("weights", OK, detail), model


def _weights_fix(weights: str) -> str:
    from vggfeat.models.weights import hub_checkpoint_dir, torchvision_weights

    entry = torchvision_weights(weights)
    if entry is not None and not Path(weights).expanduser().exists():
        target = hub_checkpoint_dir() / entry.url.rsplit("/", 1)[-1]
        return (f"download {entry.url} on a machine with network access and copy it to "
                f"{target} (or set TORCH_HOME), or pass the file's path with --weights")
    if not Path(weights).expanduser().exists():
        return ("check the path; give a .pth file (torchvision state dict or a vggfeat "
                "checkpoint) or a torchvision name such as vgg16; Caffe weights: "
                "`vggfeat convert-caffe` first")
    return ("the file exists but cannot be used: re-download or re-export it; for Caffe "
            "weights run `vggfeat convert-caffe`; give --arch when the file cannot tell")


def check_dataset(dataset: str, root, options: dict | None = None,
                  sample: int = SAMPLE_IMAGES) -> Check:
    """Whether `root` holds a complete `dataset` layout, and a few of its images decode."""
    from vggfeat.data.images import BadImageError, open_rgb
    from vggfeat.data.readers import DatasetLayoutError, open_dataset

    try:
        reader = open_dataset(dataset, root, **(options or {}))
        images = reader.images()
    except DatasetLayoutError as error:
        return Check("dataset", FAIL, str(error),
                     f"lay the {dataset} files out as the message says, or point --root at "
                     "the folder that holds them")
    except ValueError as error:  # unknown dataset name or reader option
        return Check("dataset", FAIL, str(error), "see `vggfeat extract --help`")
    if not images:
        return Check("dataset", FAIL, f"{reader.root}: the {dataset} reader found no images",
                     "check --root")
    step = max(1, len(images) // sample)
    bad = []
    for item in images[::step][:sample]:
        try:
            open_rgb(item.path)
        except (BadImageError, OSError) as error:
            bad.append(f"{item.path}: {error}")
    splits = ", ".join(reader.splits()) or "none (the protocol draws seeded splits)"
    detail = (f"{dataset} at {reader.root}: {len(images)} images, {len(reader.classes)} classes, "
              f"splits: {splits}")
    if bad:
        return Check("dataset", WARN, f"{detail}; unreadable: {'; '.join(bad)}",
                     "replace or delete those files (`vggfeat extract` records bad images "
                     "and goes on; exit status 3 unless --skip-bad)")
    return Check("dataset", OK, detail)


def read_cache_attributes(path: Path) -> dict:
    """The attributes of an HDF5 feature cache, strings decoded, with its root group's row
    counts as ``_rows`` and ``_done``; raises OSError/ValueError."""
    from vggfeat.features.cache import read_overview

    overview = read_overview(path)
    return {**overview.attrs, "_rows": overview.rows, "_done": overview.done}


def check_cache(cache, model=None) -> Check:
    """Whether a feature cache is complete and, given a model, made with its weights and
    preprocessing."""
    from vggfeat.features.cache import evaluation_problem, low_variation_warning, read_variation

    path = Path(cache).expanduser()
    problem = evaluation_problem(path)  # the same words svm-eval would refuse it with
    if problem:
        fix = ("rerun the same `vggfeat extract` command: it resumes where it stopped"
               if "unfinished" in problem else "add the labels as the message says")
        return Check("cache", FAIL, problem, fix)
    if not path.is_file():
        return Check("cache", FAIL, f"{path} does not exist",
                     "check the path, or make it with `vggfeat extract ... --out FILE.h5`")
    try:
        attrs = read_cache_attributes(path)
        cached = json.loads(attrs["preprocessing"])
        variation = read_variation(path)
    except (OSError, KeyError, ValueError) as error:
        return Check("cache", FAIL, f"{path} is not a vggfeat feature cache ({error})",
                     "make it with `vggfeat extract`")
    detail = (f"{path}: {attrs.get('dataset')} ({attrs['_done']}/{attrs['_rows']} rows), "
              f"{attrs.get('arch')} {attrs.get('layer')}, scales "
              f"{list(map(int, attrs.get('scales', [])))}, preprocessing "
              f"{json.dumps(cached, sort_keys=True)}, descriptor variation {variation:.3g}")
    flat = low_variation_warning(path, variation)
    if flat:
        return Check("cache", WARN, flat.removeprefix("warning: "),
                     "extract again with a backbone that learnt (or another --layer)")
    if model is None:
        return Check("cache", OK, detail + " (give --weights to compare)")
    problems = []
    weights_pre = model.meta["preprocessing"]
    if not _same_preprocessing(cached, weights_pre):
        problems.append(f"the cache was made with preprocessing "
                        f"{json.dumps(cached, sort_keys=True)} but {model.meta['source']} expects "
                        f"{json.dumps(weights_pre, sort_keys=True)}")
    if attrs.get("weights_sha256") not in (None, "unknown", model.meta["sha256"]):
        problems.append(f"the cache was made with other weights (sha256 "
                        f"{str(attrs['weights_sha256'])[:12]}..., {model.meta['source']} has "
                        f"{model.meta['sha256'][:12]}...)")
    if problems:
        return Check("cache", FAIL, f"{path}: " + "; ".join(problems),
                     f"re-extract with these weights: `vggfeat extract --weights "
                     f"{model.meta['source']} --out {path} --overwrite ...`, or compare with "
                     "the weights the cache was made with")
    return Check("cache", OK, detail + "; matches the weights")


def _resolves_to_cpu(device: str) -> bool:
    from vggfeat.utils.devices import resolve_device

    try:
        return resolve_device(device).type == "cpu"
    except (RuntimeError, ValueError):
        return False


def _same_preprocessing(a: dict, b: dict, tol: float = 1e-6) -> bool:
    if a.get("channel_order") != b.get("channel_order"):
        return False
    for key in ("mean", "std"):
        x, y = list(a.get(key, [])), list(b.get(key, []))
        if len(x) != len(y):
            return False
        if any(abs(float(p) - float(q)) > tol for p, q in zip(x, y, strict=True)):
            return False
    return abs(float(a.get("value_scale", 1.0)) - float(b.get("value_scale", 1.0))) <= tol


def run_checks(*, weights: str | None = None, arch: str | None = None,
               dataset: str | None = None, root=None, options: dict | None = None,
               cache=None, device: str = "auto") -> list[Check]:
    """Every check the arguments ask for, in order: versions, device, weights, dataset, cache.

    Without `weights`, `arch` alone checks torchvision's weights of that architecture.
    """
    checks = check_versions()
    checks.append(check_device(device))
    if _resolves_to_cpu(device):
        checks.append(check_cpu_bf16())
    model = None
    if weights is not None or arch is not None:
        check, model = check_weights(weights if weights is not None else arch,
                                     arch if weights is not None else None)
        checks.append(check)
    if dataset is not None or root is not None:
        if dataset is None or root is None:
            checks.append(Check("dataset", FAIL, "give both --dataset and --root",
                                "e.g. --dataset caltech101 --root ~/data/caltech101"))
        else:
            checks.append(check_dataset(dataset, root, options))
    if cache is not None:
        checks.append(check_cache(cache, model))
    return checks
