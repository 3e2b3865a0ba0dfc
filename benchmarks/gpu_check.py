"""One short GPU run that measures every GPU target of issue 12 and checks CUDA against CPU.

    python benchmarks/gpu_check.py                      # on the GPU machine: < 8 minutes
    python benchmarks/gpu_check.py --device cpu --tiny  # what the test suite runs

Three parts, small but representative sizes, each checked against the CPU fp32 path:

1. Extraction: VGG16, Q = 256, 384, 512, flips, fc7, from JPEG files (decoded on the GPU,
   batched, the next chunk prefetched on a side stream), bf16 with fp32 accumulation.
   Target >= 900 images/s on one H100/H200. Ceiling: the images/s a bf16 matrix product's
   measured FLOP/s would give (and the 989 TFLOP/s data-sheet figure). Check: the
   descriptors of a few images against the CPU fp32 engine (relative L2 error and cosine).
2. Training step: VGG16 at 224, synthetic data, channels_last, bf16 autocast, fused SGD,
   ``torch.compile`` unless ``--no-compile``. Target >= 7,000 images/s.
3. Linear SVMs: the batched solver on the device against the same solver on the CPU (same
   chosen C, same accuracy) and, at a size that fits the time, against scikit-learn's
   LinearSVC (target >= 10x). ``--liblinear-json`` adds the full Caltech-256 size
   (15,420 x 12,288, 257 classes) against a recorded LinearSVC run on the same seeded data
   (``benchmarks/svm_speed.py --side liblinear --out ...``).

Prints one table (figure, value, target, ratio to target, ratio to ceiling, check) and
appends it with the machine's name and the command to ``benchmarks/RESULTS.md``
(``--no-append`` to skip). Exit status 1 if a CUDA result disagrees with the CPU path.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from svm_speed import make_problem  # noqa: E402

from vggfeat.data.transforms import scaled_size  # noqa: E402
from vggfeat.features.descriptor import DescriptorConfig  # noqa: E402
from vggfeat.features.engine import Engine  # noqa: E402
from vggfeat.models import build_backbone  # noqa: E402

H100_BF16_TFLOPS = 989.0  # dense bf16 tensor-core peak, H100/H200 SXM data sheet

FULL = {"arch": "vgg16", "width": 1.0, "crop": 224, "scales": (256, 384, 512),
        "images": 512, "size": (500, 375), "batch": 64, "train_batch": 256,
        "train_steps": 30, "svm": (64, 4096), "svm_liblinear": (32, 2048)}
TINY = {"arch": "vgg11", "width": 0.125, "crop": 64, "scales": (64, 96),
        "images": 8, "size": (80, 60), "batch": 4, "train_batch": 8,
        "train_steps": 3, "svm": (6, 96), "svm_liblinear": (4, 256)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="test-sized nets and problems")
    parser.add_argument("--no-compile", action="store_true", help="training without compile")
    parser.add_argument("--parts", default="extract,train,svm")
    parser.add_argument("--liblinear-json", default=None,
                        help="a full-size LinearSVC result from svm_speed.py --out")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--no-append", action="store_true")
    return parser.parse_args(argv)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(device, dtype, n: int) -> float:
    """Best FLOP/s of an n x n matrix product on `device` in `dtype`."""
    a = torch.rand(n, n, device=device, dtype=dtype)
    b = torch.rand(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def image_flops(model, height, width, scales) -> float:
    """Forward FLOPs of one image at every scale with its flip (dense fc7)."""
    total = 0.0
    for q in scales:
        h, w = scaled_size(height, width, q)
        flops, fh, fw = 0.0, h, w
        for m in model.features:
            if isinstance(m, torch.nn.Conv2d):
                flops += 2 * m.in_channels * m.out_channels * 9 * fh * fw
            elif isinstance(m, torch.nn.MaxPool2d):
                fh, fw = fh // 2, fw // 2
        positions = max(fh - model.kernel + 1, 1) * max(fw - model.kernel + 1, 1)
        fc6, fc7 = model.classifier[0], model.classifier[3]
        flops += 2 * (fc6.in_features + fc7.in_features) * fc7.out_features * positions
        total += 2 * flops
    return total


def write_jpegs(folder: Path, n: int, size) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        w, h = size if k % 2 == 0 else size[::-1]
        ramp = np.linspace(0, 255, w)[None, :, None]
        pixels = ((rng.integers(0, 256, (h, w, 3)) + ramp) / 2).astype(np.uint8)
        paths.append(folder / f"{k:05d}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def row(figure, value, unit, target=None, ceiling=None, check="", higher=True):
    return {"figure": figure, "value": value, "unit": unit, "target": target,
            "ceiling": ceiling, "check": check, "higher": higher}


# -- 1. extraction -----------------------------------------------------------------------


def check_extract(s, device, tmp: Path) -> list[dict]:
    torch.manual_seed(0)
    model = build_backbone(s["arch"], width=s["width"], crop_size=s["crop"],
                           init="xavier").eval()
    precision = "bf16" if device.type == "cuda" else "fp32"
    config = DescriptorConfig.from_model(model, s["scales"], precision=precision)
    paths = write_jpegs(tmp, s["images"], s["size"])
    items = list(enumerate(paths))
    engine = Engine(model, config, device=device, batch_size=s["batch"],
                    decode_on_device=True)
    list(engine.run(items[: 2 * s["batch"]]))  # warm-up: kernels, allocator, cuDNN plans
    sync(device)
    start = time.perf_counter()
    results = {r.index: r.descriptor for r in engine.run(items)}
    sync(device)
    seconds = time.perf_counter() - start
    rate = len(items) / seconds
    # The same images through the CPU fp32 engine (PIL decoding, packed oneDNN trunk).
    cpu_model = build_backbone(s["arch"], width=s["width"], crop_size=s["crop"],
                               init="xavier")
    cpu_model.load_state_dict(model.state_dict())
    cpu_config = DescriptorConfig.from_model(cpu_model.eval(), s["scales"])
    subset = items[:4]
    cpu = {r.index: r.descriptor for r in Engine(cpu_model, cpu_config, device="cpu",
                                                 decode_on_device=False).run(subset)}
    a = np.stack([results[k] for k, _ in subset]).reshape(len(subset), -1)
    b = np.stack([cpu[k] for k, _ in subset]).reshape(len(subset), -1)
    rel = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    cosine = float(np.min(np.sum(a * b, 1) / np.linalg.norm(a, axis=1)
                          / np.linalg.norm(b, axis=1)))
    tolerance = 2e-2 if precision == "bf16" else 1e-5
    per_image = image_flops(model, s["size"][1], s["size"][0], s["scales"])
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    measured = matmul_flops(device, dtype, 8192 if device.type == "cuda" else 1024)
    ceiling = measured / per_image
    rows = [row(f"extract {s['arch']} Q={','.join(map(str, s['scales']))} flips, JPEG "
                f"decode incl., {precision}", rate, "img/s",
                900 if device.type == "cuda" else None, ceiling,
                f"vs CPU fp32: rel. L2 {rel:.1e}, min cos {cosine:.5f} "
                f"({'ok' if rel <= tolerance else 'FAIL'} at {tolerance:g})")]
    if device.type == "cuda":
        rows.append(row("  (data-sheet ceiling, 989 TFLOP/s bf16)", H100_BF16_TFLOPS * 1e12
                        / per_image, "img/s", None, None, f"{per_image / 1e9:.0f} GFLOP/img"))
    return rows, rel <= tolerance


# -- 2. training ------------------------------------------------------------------------


def check_train(s, device, use_compile: bool) -> list[dict]:
    torch.manual_seed(0)
    model = build_backbone(s["arch"], width=s["width"], crop_size=s["crop"]).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    cuda = device.type == "cuda"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                                weight_decay=5e-4, fused=True if cuda else None)
    step_model = torch.compile(model) if use_compile else model
    batch = s["train_batch"]
    x = torch.randn(batch, 3, s["crop"], s["crop"], device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.cross_entropy(step_model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    start = time.perf_counter()
    first = step().item()  # compiles here with --compile
    compile_s = time.perf_counter() - start
    for _ in range(2):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(s["train_steps"]):
        last = step()
    sync(device)
    rate = batch * s["train_steps"] / (time.perf_counter() - start)
    finite = bool(np.isfinite(first) and torch.isfinite(last).item())
    # 3x the forward FLOPs per image (forward + two backward products), at 224 crops.
    flops = 3 * image_flops(model, s["crop"], s["crop"], (s["crop"],)) / 2
    dtype = torch.bfloat16 if cuda else torch.float32
    ceiling = matmul_flops(device, dtype, 8192 if cuda else 1024) / flops
    what = ("channels_last, bf16 autocast, fused SGD" if cuda else "channels_last, fp32")
    return [row(f"train {s['arch']} {s['crop']}px synthetic, batch {batch}, {what}"
                f"{', compiled' if use_compile else ''}", rate, "img/s",
                7000 if cuda else None, ceiling,
                f"first step {compile_s:.0f} s; loss finite: {'ok' if finite else 'FAIL'}")
            ], finite


# -- 3. SVMs ------------------------------------------------------------------------------


def fit_probe(solver, device, X, y, Xt, yt):
    from vggfeat.evaluation.svm import LinearSVMProbe

    probe = LinearSVMProbe(cv=0.2, solver=solver, device=device)
    start = time.perf_counter()
    probe.fit(X, y)
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seconds, 100 * float(np.mean(probe.predict(Xt) == yt)), probe.C_


def close(a, b, n_test) -> bool:
    """Accuracies within 0.3 points, or one test image where that is more (tiny sizes)."""
    return abs(a - b) <= max(0.3, 100 / n_test + 1e-9)


def check_svm(s, device, liblinear_json) -> list[dict]:
    rows, ok = [], True
    classes, dim = s["svm"]
    data = make_problem(classes, 60, 20, dim)
    dev_s, dev_acc, dev_C = fit_probe("torch", str(device), *data)
    cpu_s, cpu_acc, cpu_C = fit_probe("torch", "cpu", *data)
    same = float(np.mean(dev_C == cpu_C))
    agree = close(dev_acc, cpu_acc, len(data[3])) and same >= 0.95
    ok &= agree
    rows.append(row(f"SVM {classes * 60} x {dim}, {classes} classes, torch on {device.type} "
                    "vs torch CPU", cpu_s / dev_s, "x", None, None,
                    f"acc {dev_acc:.2f} vs {cpu_acc:.2f}, same C {100 * same:.0f}% "
                    f"({'ok' if agree else 'FAIL'})"))
    classes, dim = s["svm_liblinear"]
    data = make_problem(classes, 60, 20, dim)
    dev_s, dev_acc, dev_C = fit_probe("torch", str(device), *data)
    ref_s, ref_acc, ref_C = fit_probe("liblinear", "cpu", *data)
    same = float(np.mean(dev_C == ref_C))
    agree = close(dev_acc, ref_acc, len(data[3])) and same >= 0.9
    ok &= agree
    rows.append(row(f"SVM {classes * 60} x {dim}, {classes} classes, torch on {device.type} "
                    "vs LinearSVC", ref_s / dev_s, "x", 10, None,
                    f"{dev_s:.2f} s vs {ref_s:.1f} s; acc {dev_acc:.2f} vs {ref_acc:.2f}, "
                    f"same C {100 * same:.0f}% ({'ok' if agree else 'FAIL'})"))
    if liblinear_json:
        ref = json.loads(Path(liblinear_json).read_text())
        p = ref["problem"]
        data = make_problem(p["classes"], p["per_class"], p["test_per_class"], p["dim"],
                            separation=p["separation"], seed=p.get("seed", 0))
        dev_s, dev_acc, dev_C = fit_probe("torch", str(device), *data)
        same = float(np.mean(dev_C == np.asarray(ref["C_per_class"])))
        agree = close(dev_acc, ref["accuracy"], len(data[3])) and same >= 0.9
        ok &= agree
        rows.append(row(f"SVM full size {len(data[0])} x {p['dim']}, {p['classes']} classes, "
                        f"torch on {device.type} vs recorded LinearSVC", ref["seconds"] / dev_s,
                        "x", 10, None, f"{dev_s:.1f} s vs {ref['seconds']:.0f} s; acc "
                        f"{dev_acc:.2f} vs {ref['accuracy']:.2f}, same C {100 * same:.0f}% "
                        f"({'ok' if agree else 'FAIL'})"))
    return rows, ok


# -- the table ----------------------------------------------------------------------------


def machine(device) -> str:
    name = platform.node()
    if device.type == "cuda":
        return f"{name}, {torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{name}, CPU ({os.cpu_count()} cores), torch {torch.__version__}"


def table(rows) -> str:
    lines = ["| figure | value | target | value / target | value / ceiling | check |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        target = f"{r['target']:,}" if r["target"] else "-"
        vs_target = f"{r['value'] / r['target']:.2f}" if r["target"] else "-"
        vs_ceiling = f"{r['value'] / r['ceiling']:.0%}" if r["ceiling"] else "-"
        lines.append(f"| {r['figure']} | {r['value']:,.1f} {r['unit']} | {target} | "
                     f"{vs_target} | {vs_ceiling} | {r['check']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu --tiny to check the script")
    sizes = TINY if args.tiny else FULL
    parts = args.parts.split(",")
    start = time.perf_counter()
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in (("extract", lambda: check_extract(sizes, device, Path(tmp))),
                          ("train", lambda: check_train(sizes, device, not args.no_compile
                                                        and device.type == "cuda")),
                          ("svm", lambda: check_svm(sizes, device, args.liblinear_json))):
            if name in parts:
                part_rows, part_ok = run()
                rows += part_rows
                ok &= part_ok
                print(f"[{name} done at {time.perf_counter() - start:.0f} s]", flush=True)
    text = table(rows)
    print(text)
    command = "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None
                                                           else sys.argv[1:])
    if not args.no_append:
        with open(args.results, "a") as f:
            f.write(f"\n### gpu_check on {machine(device)}, {time.strftime('%Y-%m-%d %H:%M')}"
                    f"\n\n    {command}\n\n{text}\n\nWall time {time.perf_counter() - start:.0f}"
                    f" s; load average {os.getloadavg()[0]:.1f}.\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
