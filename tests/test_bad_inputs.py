"""The bad-input sweep: every command, each option and input file, given the wrong kind.

Each case must end with its documented exit status (1 failed, 2 bad usage or input, 3 bad
images), a message that names the option or file, and no Python traceback. The bad files
are made once per module: damaged HDF5 caches (bytes flipped at several offsets),
truncated and foreign checkpoints, a pickle that runs code, bad caffemodels, malformed CSV
and VOC XML.

A case's subject is its message, so most run in this process through click's CliRunner
(the same `cli` group and error handling as the console command, without ~2 s of
interpreter and torch start per case). The cases whose subject is the process itself run
as real `python -m vggfeat ...` processes (`IN_A_PROCESS`):
`python -m vggfeat` itself and a real out-of-memory failure; the cases that need the GPUs
hidden, a fresh interpreter (a pickle that would run code) or HDF5 reading damaged files
outside pytest share one other process (`IN_A_SHARED_PROCESS`). Both run beside the
in-process ones.
"""
from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import subprocess
import sys
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import make_tiny_backbone
from helpers_datasets import make_csv_dataset, make_folder_dataset, make_voc, write_feature_cache

from vggfeat.models import save_backbone
from vggfeat.utils.threads import torch_threads

# A path no one may write to, even root: sysfs refuses new files.
READ_ONLY = "/sys/vggfeat-out"
TIMEOUT = 300  # generous: a loaded 2-core machine takes 30 s+ to import torch


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _flip(src: Path, dst: Path, offset: int) -> Path:
    data = bytearray(src.read_bytes())
    offset = offset if offset >= 0 else len(data) + offset
    for k in range(offset, min(offset + 8, len(data))):
        data[k] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


# Byte offsets damaged in a copy of a good cache: the superblock, its addresses, the root
# group's object header, the middle of the file, the end.
H5_OFFSETS = (0, 8, 40, 96, 200, 400, 800, 1200, 2000, 4000, -1000, -200)


def make_bad_files(base: Path) -> dict[str, Path]:
    """Write every bad (and the few good) inputs the cases refer to; name -> path."""
    p: dict[str, Path] = {}
    weights = base / "weights"
    weights.mkdir()
    model = make_tiny_backbone()
    p["good.pth"] = save_backbone(model, weights / "good.pth")
    data = p["good.pth"].read_bytes()
    (weights / "empty.pth").touch()
    (weights / "text.pth").write_text("hello, I am not a checkpoint\n")
    (weights / "truncated.pth").write_bytes(data[: len(data) // 2])
    torch.save({"a": _RunsCode(base / "pwned")}, weights / "evil.pth")
    (weights / "raw.pkl").write_bytes(pickle.dumps(_RunsCode(base / "pwned"), protocol=4))
    torch.save([1, 2, 3], weights / "list.pth")
    torch.save({"conv.weight": torch.zeros(3, 3)}, weights / "foreign.pth")
    for name, key, value in (("nan-mean.pth", "mean", [float("nan"), 0.4, 0.4]),
                             ("zero-std.pth", "std", [0.2, 0.0, 0.2])):
        bad = make_tiny_backbone()
        bad.meta["preprocessing"] = {**bad.meta["preprocessing"], key: value}
        save_backbone(bad, weights / name)
    release = weights / "release"
    release.mkdir()
    torch.save(model.state_dict(), release / "vgg16-397923af.pth")
    (weights / "text.caffemodel").write_text("not protobuf at all")
    (weights / "empty.caffemodel").touch()
    (weights / "random.caffemodel").write_bytes(np.random.default_rng(0).bytes(4096))
    for name in ("empty.pth", "text.pth", "truncated.pth", "evil.pth", "raw.pkl", "list.pth",
                 "foreign.pth", "nan-mean.pth", "zero-std.pth", "text.caffemodel",
                 "empty.caffemodel", "random.caffemodel"):
        p[name] = weights / name
    p["release"] = release / "vgg16-397923af.pth"
    # a run folder without backbone
    (base / "emptyrun").mkdir()
    p["emptyrun"] = base / "emptyrun"

    # datasets
    folder = make_folder_dataset(base / "folder", per_class=3)
    p["folder"] = folder.root
    csv_data = make_csv_dataset(base / "csvdata", n_images=9)
    p["csv"] = csv_data.root
    bad_csv = base / "badcsv"
    shutil.copytree(csv_data.root, bad_csv)
    lines = (bad_csv / "labels.csv").read_text().splitlines()
    lines[2] = "only-one-column"
    (bad_csv / "labels.csv").write_text("\n".join(lines) + "\n")
    p["badcsv"] = bad_csv
    header_csv = base / "headercsv"
    header_csv.mkdir()
    (header_csv / "labels.csv").write_text("file,class\na.jpg,cat\n")
    p["headercsv"] = header_csv
    voc = make_voc(base / "voc", "2007", {"train": 2, "val": 2, "test": 2})
    shutil.rmtree(voc.root / "VOCdevkit/VOC2007/ImageSets")  # a devkit without its splits
    p["badvoc"] = voc.root
    (base / "notadir.txt").write_text("a file where a folder is expected\n")
    p["file"] = base / "notadir.txt"

    # feature caches
    ids = sorted(str(f.relative_to(folder.root)) for f in folder.root.rglob("*.jpg"))
    x = np.random.default_rng(0).random((len(ids), 2, 16)).astype(np.float32)
    caches = base / "caches"
    caches.mkdir()
    good = write_feature_cache(caches / "good.h5", dataset="folder", root=folder.root, ids=ids,
                               descriptors=x)
    p["good.h5"] = good
    for offset in H5_OFFSETS:
        p[f"flip{offset}.h5"] = _flip(good, caches / f"flip{offset}.h5", offset)
    (caches / "truncated.h5").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (caches / "text.h5").write_text("not HDF5\n")
    (caches / "empty.h5").touch()
    with h5py.File(caches / "plain.h5", "w") as f:
        f["x"] = [1, 2, 3]
    for name in ("truncated.h5", "text.h5", "empty.h5", "plain.h5"):
        p[name] = caches / name
    splits = base / "splits.csv"
    splits.write_text("split,class,C\n0,cat,1\n")
    p["badsplits"] = splits
    rows = base / "rows.csv"
    rows.write_text("split,id,class,subset\nzero,cat/000.jpg,cat,train\n")
    p["badrows"] = rows
    return p


# (case id, command line with {name} placeholders, exit status, fragment of the message)
CASES = [
    # the group itself
    ("unknown-command", "nosuchcommand", 2, "No such command"),
    ("unknown-global-option", "--bogus info", 2, "--bogus"),
    ("info-extra-argument", "info extra", 2, "extra"),
    # convert-caffe
    ("caffe-missing", "convert-caffe nope.caffemodel out.pth", 2, "nope.caffemodel"),
    ("caffe-text", "convert-caffe {text.caffemodel} out.pth", 2, "text.caffemodel"),
    ("caffe-empty", "convert-caffe {empty.caffemodel} out.pth", 2, "empty.caffemodel"),
    ("caffe-random", "convert-caffe {random.caffemodel} out.pth", 2, "random.caffemodel"),
    ("caffe-is-pth", "convert-caffe {good.pth} out.pth", 2, "good.pth"),
    ("caffe-bad-arch", "convert-caffe {text.caffemodel} out.pth --arch vgg99", 2, "--arch"),
    # export-torchvision
    ("export-missing", "export-torchvision nope.pth out.pth", 2, "nope.pth"),
    ("export-truncated", "export-torchvision {truncated.pth} out.pth", 2, "truncated.pth"),
    ("export-evil", "export-torchvision {evil.pth} out.pth", 2, "contains code"),
    ("export-narrow-net", "export-torchvision {good.pth} out.pth", 2, "torchvision has no"),
    # extract: weights
    ("extract-weights-missing", "extract --dataset folder --root {folder} --weights nope.pth",
     2, "nope.pth"),
    ("extract-weights-empty", "extract --dataset folder --root {folder} --weights {empty.pth}",
     2, "empty.pth"),
    ("extract-weights-text", "extract --dataset folder --root {folder} --weights {text.pth}",
     2, "text.pth"),
    ("extract-weights-truncated",
     "extract --dataset folder --root {folder} --weights {truncated.pth}", 2, "truncated.pth"),
    ("extract-weights-code", "extract --dataset folder --root {folder} --weights {evil.pth}",
     2, "contains code"),
    ("extract-weights-raw-pickle",
     "extract --dataset folder --root {folder} --weights {raw.pkl}", 2, "contains code"),
    ("extract-weights-list", "extract --dataset folder --root {folder} --weights {list.pth}",
     2, "list.pth"),
    ("extract-weights-foreign",
     "extract --dataset folder --root {folder} --weights {foreign.pth}", 2, "foreign.pth"),
    ("extract-weights-nan-mean",
     "extract --dataset folder --root {folder} --weights {nan-mean.pth}", 2, "finite"),
    ("extract-weights-zero-std",
     "extract --dataset folder --root {folder} --weights {zero-std.pth}", 2, "positive"),
    ("extract-weights-fake-release",
     "extract --dataset folder --root {folder} --weights {release}", 2, "397923af"),
    ("extract-weights-hub-name", "extract --dataset folder --root {folder} --weights vgg16",
     2, "vgg16-397923af.pth not found"),
    ("extract-weights-unknown-name",
     "extract --dataset folder --root {folder} --weights vgg99", 2, "vgg99"),
    ("extract-arch-unknown",
     "extract --dataset folder --root {folder} --weights {good.pth} --arch vgg99", 2, "vgg99"),
    # extract: dataset
    ("extract-dataset-unknown", "extract --dataset imagenet --root {folder} --weights x",
     2, "--dataset"),
    ("extract-root-missing", "extract --dataset folder --root nowhere --weights {good.pth}",
     2, "nowhere"),
    ("extract-root-is-file", "extract --dataset folder --root {file} --weights {good.pth}",
     2, "notadir.txt"),
    ("extract-csv-malformed-row", "extract --dataset csv --root {badcsv} --weights {good.pth}",
     2, "labels.csv"),
    ("extract-csv-wrong-header",
     "extract --dataset csv --root {headercsv} --weights {good.pth}", 2, "path,label"),
    ("extract-voc-no-imagesets",
     "extract --dataset voc2007 --root {badvoc} --weights {good.pth}", 2, "ImageSets"),
    ("extract-option-not-key-value",
     "extract --dataset folder --root {folder} --weights {good.pth} --option nokey", 2,
     "KEY=VALUE"),
    ("extract-option-unknown",
     "extract --dataset folder --root {folder} --weights {good.pth} --option colour=1", 2,
     "colour"),
    # extract: options
    ("extract-scales-text",
     "extract --dataset folder --root {folder} --weights {good.pth} --scales abc", 2, "--scales"),
    ("extract-scales-zero",
     "extract --dataset folder --root {folder} --weights {good.pth} --scales 0", 2, "--scales"),
    ("extract-scales-negative",
     "extract --dataset folder --root {folder} --weights {good.pth} --scales=-64", 2,
     "--scales"),
    ("extract-batch-zero",
     "extract --dataset folder --root {folder} --weights {good.pth} --batch-size 0", 2,
     "--batch-size"),
    ("extract-max-pixels-zero",
     "extract --dataset folder --root {folder} --weights {good.pth} --max-pixels 0", 2,
     "--max-pixels"),
    ("extract-workers-negative",
     "extract --dataset folder --root {folder} --weights {good.pth} --workers=-1", 2,
     "--workers"),
    ("extract-device-cuda",
     "extract --dataset folder --root {folder} --weights {good.pth} --device cuda:7", 2,
     "--device"),
    ("extract-device-mps",
     "extract --dataset folder --root {folder} --weights {good.pth} --device mps", 2, "mps"),
    ("extract-device-typo",
     "extract --dataset folder --root {folder} --weights {good.pth} --device cpux", 2, "cpux"),
    ("extract-out-read-only",
     "extract --dataset folder --root {folder} --weights {good.pth} --scales 64 "
     f"--out {READ_ONLY}/f.h5", 2, READ_ONLY),
    ("extract-out-is-folder",
     "extract --dataset folder --root {folder} --weights {good.pth} --scales 64 --out {folder}",
     2, "folder"),
    ("extract-absurd-scale",
     "extract --dataset folder --root {folder} --weights {good.pth} --scales 400000 -q "
     "--out absurd.h5", 1, "out of memory"),
    # svm-eval
    ("svm-missing-cache", "svm-eval nope.h5", 2, "nope.h5"),
    ("svm-text-cache", "svm-eval {text.h5}", 2, "text.h5"),
    ("svm-empty-cache", "svm-eval {empty.h5}", 2, "empty.h5"),
    ("svm-truncated-cache", "svm-eval {truncated.h5}", 2, "truncated.h5"),
    ("svm-plain-hdf5", "svm-eval {plain.h5}", 2, "plain.h5"),
    ("svm-C-nan", "svm-eval {good.h5} --C nan", 2, "--C"),
    ("svm-C-negative", "svm-eval {good.h5} --C=-1", 2, "--C"),
    ("svm-C-text", "svm-eval {good.h5} --C many", 2, "--C"),
    ("svm-cv-one", "svm-eval {good.h5} --cv 1", 2, "--cv"),
    ("svm-cv-text", "svm-eval {good.h5} --cv lots", 2, "--cv"),
    ("svm-cv-too-many-folds", "svm-eval {good.h5} --cv 50 --C 1,10 -q --out cv", 2, "--cv 50"),
    ("svm-splits-file-not-splits", "svm-eval {good.h5} --splits-file {badsplits}", 2,
     "not a splits file"),
    ("svm-splits-file-bad-row", "svm-eval {good.h5} --splits-file {badrows} -q --out sp", 2,
     "rows.csv, line 2"),
    ("svm-splits-file-missing", "svm-eval {good.h5} --splits-file nope.csv", 2, "nope.csv"),
    ("svm-device-cuda", "svm-eval {good.h5} --device cuda:7", 2, "--device"),
    ("svm-solver-unknown", "svm-eval {good.h5} --solver sgd", 2, "--solver"),
    ("svm-out-is-file", "svm-eval {good.h5} --out {file}", 2, "notadir.txt"),
    ("svm-out-read-only", f"svm-eval {{good.h5}} -q --C 1 --out {READ_ONLY}", 2, READ_ONLY),
    *[(f"svm-damaged-byte-{o}", f"svm-eval {{flip{o}.h5}} -q --C 1 --out d{o}", None,
       f"flip{o}.h5") for o in H5_OFFSETS],
    # train-backbone
    ("train-width-zero", "train-backbone --synthetic --out r --width 0", 2, "--width"),
    ("train-width-negative", "train-backbone --synthetic --out r --width=-1", 2, "--width"),
    ("train-width-nan", "train-backbone --synthetic --out r --width nan", 2, "--width"),
    ("train-width-no-channels", "train-backbone --synthetic --out r --width 0.001", 2,
     "--width"),
    ("train-crop-not-32", "train-backbone --synthetic --out r --crop-size 100", 2,
     "--crop-size"),
    ("train-crop-zero", "train-backbone --synthetic --out r --crop-size 0", 2, "--crop-size"),
    ("train-mean-two-values", "train-backbone --synthetic --out r --mean 1,2", 2, "--mean"),
    ("train-std-zero", "train-backbone --synthetic --out r --std 0,1,1", 2, "--std"),
    ("train-std-nan", "train-backbone --synthetic --out r --std nan,1,1", 2, "--std"),
    ("train-lr-nan", "train-backbone --synthetic --out r --lr nan", 2, "--lr"),
    ("train-lr-zero", "train-backbone --synthetic --out r --lr 0", 2, "--lr"),
    ("train-momentum-big", "train-backbone --synthetic --out r --momentum 1.5", 2,
     "--momentum"),
    ("train-epochs-negative", "train-backbone --synthetic --out r --epochs=-1", 2, "--epochs"),
    ("train-batch-zero", "train-backbone --synthetic --out r --batch-size 0", 2,
     "--batch-size"),
    ("train-jitter-reversed", "train-backbone --synthetic --out r --scale-jitter 512 256", 2,
     "--scale-jitter"),
    ("train-device-cuda", "train-backbone --synthetic --out r --device cuda", 2, "--device"),
    ("train-device-typo", "train-backbone --synthetic --out r --device gpu", 2, "gpu"),
    ("train-no-data", "train-backbone --out r", 2, "--synthetic"),
    ("train-data-missing", "train-backbone --data nowhere --out r --width 0.125 --crop-size 64 "
     "--scale 64", 2, "nowhere"),
    ("train-finetune-truncated", "train-backbone --synthetic --out r --width 0.125 "
     "--crop-size 64 --scale 64 --finetune-from {truncated.pth}", 2, "truncated.pth"),
    ("train-init-from-code", "train-backbone --synthetic --out r --width 0.125 --crop-size 64 "
     "--scale 64 --init-from {evil.pth}", 2, "contains code"),
    ("train-finetune-empty-run", "train-backbone --synthetic --out r --width 0.125 "
     "--crop-size 64 --scale 64 --finetune-from {emptyrun}", 2, "emptyrun"),
    ("train-out-read-only", f"train-backbone --synthetic --out {READ_ONLY} --width 0.125 "
     "--crop-size 64 --scale 64 --epochs 1 --synthetic-size 8 --batch-size 4 --workers 0",
     2, READ_ONLY),
    # eval-backbone
    ("evalb-data-missing", "eval-backbone --data nowhere --weights {good.pth}", 2, "nowhere"),
    ("evalb-weights-truncated", "eval-backbone --data {folder} --weights {truncated.pth}", 2,
     "truncated.pth"),
    ("evalb-weights-code", "eval-backbone --data {folder} --weights {evil.pth}", 2,
     "contains code"),
    ("evalb-scales-text", "eval-backbone --data {folder} --weights {good.pth} --scales x", 2,
     "--scales"),
    ("evalb-device-mps", "eval-backbone --data {folder} --weights {good.pth} --device mps", 2,
     "mps"),
    ("evalb-limit-zero", "eval-backbone --data {folder} --weights {good.pth} --limit 0", 2,
     "--limit"),
    # doctor (reports every check; exit 1 when one fails)
    ("doctor-weights-truncated", "doctor --weights {truncated.pth}", 1, "truncated.pth"),
    ("doctor-weights-code", "doctor --weights {evil.pth}", 1, "contains code"),
    ("doctor-cache-damaged", "doctor --cache {flip0.h5}", 1, "flip0.h5"),
    ("doctor-cache-text", "doctor --cache {text.h5}", 1, "text.h5"),
    ("doctor-root-missing", "doctor --dataset folder --root nowhere", 1, "nowhere"),
    ("doctor-device-missing", "doctor --device cuda:7", 1, "cuda:7"),
    ("doctor-option-bad", "doctor --option nokey", 2, "KEY=VALUE"),
    # eval-localisation
    ("loc-root-missing", "eval-localisation --root nowhere --weights {good.pth}", 2, "nowhere"),
    ("loc-not-a-localisation-net", "eval-localisation --root {folder} --weights {good.pth}", 2,
     "not a localisation net"),
    ("loc-iou-big", "eval-localisation --root {folder} --weights {good.pth} --iou 2", 2,
     "--iou"),
    ("loc-merge-zero",
     "eval-localisation --root {folder} --weights {good.pth} --merge-threshold 0", 2,
     "--merge-threshold"),
    ("loc-protocol-unknown",
     "eval-localisation --root {folder} --weights {good.pth} --protocol corner", 2,
     "--protocol"),
    # features
    ("features-info-missing", "features info nope.h5", 2, "nope.h5"),
    ("features-info-text", "features info {text.h5}", 2, "text.h5"),
    ("features-info-damaged", "features info {flip8.h5}", None, "flip8.h5"),
    ("features-export-format", "features export {good.h5} --to xls", 2, "--to"),
    ("features-export-text", "features export {text.h5} --to npy", 2, "text.h5"),
    ("features-export-read-only",
     f"features export {{good.h5}} --to npy --out {READ_ONLY}/x.npy", 2, READ_ONLY),
    # compare
    ("compare-missing", "compare nowhere", 2, "nowhere"),
    ("compare-not-results", "compare {folder}", 2, "summary.json"),
    ("compare-file", "compare {file}", 2, "notadir.txt"),
    # datasets make-digits
    ("digits-out-is-file", "datasets make-digits {file}", 2, "notadir.txt"),
    ("digits-size-small", "datasets make-digits d --size 2", 2, "--size"),
    ("digits-digits-text", "datasets make-digits d --split none --digits abc", 2, "abc"),
    ("digits-val-fraction", "datasets make-digits d --val-fraction 2", 2, "--val-fraction"),
    ("digits-out-read-only", f"datasets make-digits {READ_ONLY} --per-class 2", 2, READ_ONLY),
]


def _fill(text: str, paths: dict) -> str:
    """Replace each {name} by the path of that bad file (names hold dots: no str.format)."""
    return re.sub(r"\{([^{}]+)\}", lambda m: str(paths[m.group(1)]), text)


# Cases run as real `python -m vggfeat` processes, one each: their subject is the process.
IN_A_PROCESS = {
    "unknown-command",  # `python -m vggfeat`: the entry point and the lazy command group
    "extract-absurd-scale",  # a real allocation failure, which must not take pytest along
}
# Cases run in one other, fresh process with the GPUs hidden (CUDA_VISIBLE_DEVICES="",
# which cannot change once this process has looked at CUDA: "no GPU" must be said on a
# machine that has one too), each through click's runner; what that process prints
# outside the runner (HDF5's C library on a damaged file) is added to every case's output.
IN_A_SHARED_PROCESS = {
    "extract-device-cuda", "svm-device-cuda", "train-device-cuda", "doctor-device-missing",
    "extract-weights-code",  # a pickle that would run code, in an interpreter of its own
    "svm-damaged-byte-0", "doctor-cache-damaged",  # HDF5 on damaged files, outside pytest
    "train-out-read-only",
}

# The process that runs the IN_A_SHARED_PROCESS cases: reads [[args, cwd], ...] as JSON on stdin,
# writes [[status, stdout, stderr], ...].
BATCH = """
import json, sys
sys.path.insert(0, sys.argv[1])
from test_bad_inputs import _invoke
cases = json.load(sys.stdin)
done = [_invoke(args, cwd, {"VGGFEAT_DEBUG": None}) for args, cwd in cases]
print(json.dumps([[d.returncode, d.stdout, d.stderr] for d in done]))
"""


def _run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "vggfeat", *args]
    try:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT)
    except subprocess.TimeoutExpired as expired:  # fails this case only, not the sweep
        return subprocess.CompletedProcess(command, -1, "", f"TIMEOUT ({expired})")


def _invoke(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """The case in this process: click's runner on the `cli` group, in the case's folder
    (relative outputs land there), with the sweep's environment and warnings off (as
    PYTHONWARNINGS=ignore does for a process). An exception that escapes the group is put
    into stderr with its traceback, so the case fails as a process would."""
    from click.testing import CliRunner

    from vggfeat.cli import cli

    before = os.getcwd()
    os.chdir(cwd)
    try:
        with warnings.catch_warnings(), torch_threads(1):
            warnings.simplefilter("ignore")
            result = CliRunner().invoke(cli, args, env=env, catch_exceptions=True)
    finally:
        os.chdir(before)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, stderr)


def _shared_process(jobs: list[tuple[str, list[str], Path]], env: dict) -> dict:
    """Run the cases `jobs` (name, args, folder) in one process with no GPU visible."""
    import json

    cases = [[args, str(cwd)] for _, args, cwd in jobs]
    done = subprocess.run([sys.executable, "-c", BATCH, str(Path(__file__).parent)],
                          input=json.dumps(cases), env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    if done.returncode:  # the shared process itself failed: every case in it fails with its output
        return {name: done for name, *_ in jobs}
    return {name: subprocess.CompletedProcess(args, status, stdout, stderr + done.stderr)
            for (name, args, _), (status, stdout, stderr) in zip(jobs, json.loads(done.stdout),
                                                                 strict=True)}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Run every case once: the in-process ones one after another here, the processes
    meanwhile; case id -> (process, paths)."""
    base = tmp_path_factory.mktemp("bad")
    paths = make_bad_files(base)
    env = {k: v for k, v in os.environ.items() if k != "VGGFEAT_DEBUG"}
    env.update(TORCH_HOME=str(base / "torch-home"), OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")

    def job(case):
        name, line, *_ = case
        work = base / "runs" / name
        work.mkdir(parents=True)
        return name, [_fill(a, paths) for a in line.split()], work

    jobs = [job(case) for case in CASES]
    with ThreadPoolExecutor(max_workers=3) as pool:
        shared = pool.submit(_shared_process, [j for j in jobs if j[0] in IN_A_SHARED_PROCESS],
                             env)
        processes = {name: pool.submit(_run, args, work, env)
                     for name, args, work in jobs if name in IN_A_PROCESS}
        results = {name: _invoke(args, work, {"TORCH_HOME": env["TORCH_HOME"],
                                              "VGGFEAT_DEBUG": None})
                   for name, args, work in jobs if name not in IN_A_PROCESS | IN_A_SHARED_PROCESS}
        results.update((name, future.result()) for name, future in processes.items())
        results.update(shared.result())
    return results, paths, base


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_message(sweep, case):
    results, paths, base = sweep
    name, line, status, fragment = case
    done = results[name]
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    if status is None:  # a damaged data byte may go unnoticed; a damaged structure may not
        assert done.returncode in (0, 1, 2), output
        if done.returncode:
            assert fragment in output and output.count("\n") <= 3, output
        return
    assert done.returncode == status, output
    fragment = _fill(fragment, paths)
    assert fragment.lower() in output.lower(), output
    assert not (base / "pwned").exists()  # no pickle ever ran


def test_sweep_is_large_and_covers_every_command():
    from vggfeat.cli import COMMANDS

    assert len(CASES) >= 60
    assert IN_A_PROCESS | IN_A_SHARED_PROCESS <= {c[0] for c in CASES}  # each names a case
    lines = [c[1] for c in CASES]
    for command in COMMANDS:
        assert any(line.startswith(command) for line in lines), command


# A command with a real bug in it, registered the way every command is (lazily, by name).
BUGGY = """
import sys
import click
from vggfeat import cli

@click.command()
def boom():
    {}.pop("a key that is not there")  # a bug, not a user's mistake

cli.COMMANDS["boom"] = "__main__:boom"
sys.argv[0] = "vggfeat"
cli.main()
"""


@pytest.mark.parametrize("how", ["plain", "--debug", "VGGFEAT_DEBUG=1"])
def test_internal_error_is_one_line_unless_debug_asks_for_the_traceback(tmp_path, how):
    env = {k: v for k, v in os.environ.items() if k != "VGGFEAT_DEBUG"}
    if how.startswith("VGGFEAT_DEBUG"):
        env["VGGFEAT_DEBUG"] = "1"
    args = ["--debug", "boom"] if how == "--debug" else ["boom"]
    done = subprocess.run([sys.executable, "-c", BUGGY, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 1
    if how == "plain":
        assert "Traceback" not in done.stderr
        assert "internal error (KeyError" in done.stderr and "--debug" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    else:
        assert "Traceback" in done.stderr and "a key that is not there" in done.stderr


@pytest.mark.parametrize("error, status, words", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/out.h5"), 1,
     ["/data/out.h5", "no space left", "rerun"]),
    (PermissionError(errno.EACCES, "Permission denied", "/data/run"), 2,
     ["/data/run", "Permission denied", "--out"]),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x"), 2, ["/mnt/ro/x", "--out"]),
    (MemoryError(), 1, ["out of memory", "--batch-size"]),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB"), 1,
     ["out of memory", "--max-pixels"]),
    (KeyError("x"), 1, ["internal error (KeyError", "--debug"]),
])
def test_escaped_errors_are_described(error, status, words):
    from vggfeat.utils.errors import describe

    message, code = describe(error)
    assert code == status and "\n" not in message
    for word in words:
        assert word in message
