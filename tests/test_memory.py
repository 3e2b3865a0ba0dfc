"""Issue 22: reading a cache, exporting it and writing scores.csv with memory bounded by the
data and the same numbers and bytes as before.

Peak memory is measured in a real subprocess (its own ru_maxrss, after vs before the read),
so nothing else in the test process counts. Reference values are computed here from the
raw HDF5 rows with the whole-matrix arithmetic the block reader replaces.
"""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from vggfeat.features import cache
from vggfeat.features.descriptor import DescriptorConfig
from vggfeat.utils.memory import TooBigError, available_bytes

REPO = Path(__file__).resolve().parent.parent


def attributes(scales: int):
    pre = {"mean": [0.5] * 3, "std": [0.25] * 3, "channel_order": "RGB", "value_scale": 1.0}
    config = DescriptorConfig(arch="vgg16", weights_sha256="ab" * 32, preprocessing=pre,
                              scales=tuple(256 + 128 * k for k in range(scales)))
    return cache.cache_attributes(config, dataset="folder")


def build_cache(out: Path, rows: int, scales: int, dim: int, seed: int = 0,
                order=None, skip=()) -> Path:
    """A finished cache of random float32 rows written through the cache writer; `order`
    permutes the ids (a second net's file of the same images), `skip` rows stay not done."""
    ids = [f"img{k:06d}" for k in (range(rows) if order is None else order)]
    partial = cache.open_for_writing(out, attributes(scales), {"/": ids}, dim,
                                     log=lambda m: None)
    writer = cache.RowWriter(partial, flush_every=1000)
    rng = np.random.default_rng(seed)
    for k in range(rows):
        row = rng.standard_normal((scales, dim), dtype=np.float32)
        if k not in skip:
            writer.put(k, row)
    writer.file.flush()
    writer.file.close()
    if not skip:
        cache.finalize(out)
        return out
    return partial


def reference(path: Path, aggregate: str, l2: bool = True):
    """(ids, X) by the whole-matrix arithmetic: float64 mean or stack, float64 L2, float32."""
    with h5py.File(path, "r") as f:
        done = f["done"][()]
        ids = [i.decode() for i in f["ids"][()][done]]
        d = f["descriptors"][()][done].astype(np.float32)
    x = d.mean(axis=1, dtype=np.float64) if aggregate == "avg" \
        else d.reshape(len(d), -1).astype(np.float64)
    if l2:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    return ids, x.astype(np.float32)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few rows, so a small cache is read in many blocks."""
    from vggfeat.features.cache import rows

    monkeypatch.setattr(rows, "BLOCK_BYTES", 3000)


@pytest.mark.parametrize("aggregate", ["avg", "stack"])
@pytest.mark.parametrize("l2", [True, False])
def test_block_read_equals_whole_matrix_arithmetic(tmp_path, small_blocks, aggregate, l2):
    path = build_cache(tmp_path / "a.h5", 57, 3, 40)
    ids, x = cache.load_features(path, aggregate, l2)
    want_ids, want = reference(path, aggregate, l2)
    assert ids == want_ids and x.dtype == np.float32
    np.testing.assert_array_equal(x, want)


def test_block_read_of_two_files_in_different_orders(tmp_path, small_blocks):
    """A second cache holding the same images in another order is aligned by id, block by
    block (rows read out of order), as the whole-matrix stack was."""
    first = build_cache(tmp_path / "d.h5", 40, 2, 24)
    order = np.random.default_rng(3).permutation(40)
    second = build_cache(tmp_path / "e.h5", 40, 3, 16, seed=1, order=order)
    ids, x = cache.load_features([first, second], "avg", block_l2=True)
    ids_a, a = reference(first, "avg", l2=True)
    ids_b, b = reference(second, "avg", l2=True)
    b = b[[ids_b.index(i) for i in ids_a]]
    both = np.concatenate([a, b], axis=1).astype(np.float64)
    want = (both / np.linalg.norm(both, axis=1, keepdims=True)).astype(np.float32)
    assert ids == ids_a
    np.testing.assert_allclose(x, want, rtol=1e-6)  # want's blocks went through float32


def test_partial_cache_rows_done_only(tmp_path, small_blocks):
    partial = build_cache(tmp_path / "p.h5", 30, 2, 8, skip={3, 17, 18})
    ids, stored, missing = cache.read_done_rows(partial)
    with h5py.File(partial, "r") as f:
        done = f["done"][()]
        np.testing.assert_array_equal(stored, f["descriptors"][()][done])
    assert missing == 3 and len(ids) == 27 and "img000003" not in ids


def test_export_same_bytes_as_np_save_and_pandas(tmp_path, small_blocks):
    """The streamed .npy is byte for byte `np.save` of the whole array, the csv pandas'
    `to_csv` of the whole table: the files export wrote before it streamed."""
    import pandas as pd

    from vggfeat.features.export import export_features

    path = build_cache(tmp_path / "a.h5", 23, 3, 10)
    ids, x = reference(path, "stack")
    np.save(tmp_path / "want.npy", x)
    table = pd.DataFrame(x, columns=[f"f{k}" for k in range(x.shape[1])])
    table.insert(0, "id", ids)
    table.to_csv(tmp_path / "want.csv", index=False, float_format="%.7g")
    export_features(path, tmp_path / "got.npy", "npy", aggregate="stack")
    export_features(path, tmp_path / "got.csv", "csv", aggregate="stack")
    assert (tmp_path / "got.npy").read_bytes() == (tmp_path / "want.npy").read_bytes()
    assert (tmp_path / "got.csv").read_bytes() == (tmp_path / "want.csv").read_bytes()
    assert (tmp_path / "got.ids.txt").read_text().split() == ids


PEAK = """
import resource, sys
import numpy as np
from vggfeat.features import cache
from vggfeat.features.export import export_features
what, path = sys.argv[1], sys.argv[2]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if what == "load":
    ids, x = cache.load_features(path, "stack")
    used = x.nbytes
else:
    export_features(path, sys.argv[3], "npy", aggregate="stack")
    used = np.load(sys.argv[3], mmap_mode="r").nbytes
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024, used)
"""


def peak_growth(*args) -> tuple[int, int]:
    """(peak RSS growth in bytes, float32 bytes of the result) of a read in a subprocess."""
    done = subprocess.run([sys.executable, "-c", PEAK, *map(str, args)], capture_output=True,
                          text=True, check=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    growth, used = map(int, done.stdout.split())
    return growth, used


@pytest.mark.slow
def test_peak_memory_of_stacked_read_and_export(tmp_path):
    """Stacked scales (3 x 2048, 2,000 rows: 49 MB of float32 descriptors): reading held
    about 8x that at once (stored rows, float32 and float64 copies, the normalised
    float64 copy), export 6.5x. Now: the float32 result plus bounded scratch, and export
    only the scratch."""
    path = build_cache(tmp_path / "big.h5", 2000, 3, 2048)
    growth, used = peak_growth("load", path)
    scratch = 48 * 2**20  # a few blocks of BLOCK_BYTES, the HDF5 chunk cache, allocator slack
    assert growth <= 1.2 * used + scratch, (growth / used, growth)
    growth, used = peak_growth("export", path, tmp_path / "x.npy")
    assert growth <= 0.2 * used + scratch, (growth / used, growth)


def test_too_big_for_memory_refused_before_reading(tmp_path):
    """A cache whose stacked rows cannot fit in the memory available is refused with the
    fixes before anything is allocated (HDF5 stores the unwritten rows sparsely, so the
    file is small)."""
    available = available_bytes()
    if available is None:
        pytest.skip("this system does not say how much memory is available")
    scales, dim = 4, 65536
    rows = int(2 * available // (scales * dim * 4)) + 1
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:
        f.attrs.update(attributes(scales))
        f.create_dataset("ids", data=[f"i{k}" for k in range(rows)],
                         dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("done", data=np.ones(rows, bool))
        f.create_dataset("descriptors", shape=(rows, scales, dim), dtype=np.float32,
                         chunks=(1, scales, dim))
    with pytest.raises(TooBigError, match=r"needs .* GiB of memory .*--aggregate avg"):
        cache.load_features(path, "stack")
    from vggfeat.evaluation import inputs

    _, features = inputs.load([path], "stack")  # opened, nothing read
    try:
        with pytest.raises(TooBigError, match=r"^svm-eval: the \d+ rows x 262144 float32 of "
                                              r"split 0 \(train\) needs .* GiB of memory "):
            features.front(features.ids, "split 0 (train)")  # before any row is read
    finally:
        features.close()
    assert TooBigError.exit_code == 2


def test_scores_csv_same_bytes_as_dict_writer(tmp_path, monkeypatch):
    """scores.csv, written from arrays a block at a time, is byte for byte what csv's
    DictWriter wrote from one dict per row (floats as repr), for float32 and float64
    scores, odd ids (commas, quotes), extreme values and splits without labels."""
    from vggfeat.evaluation import report
    from vggfeat.evaluation.protocols.common import Result, score_rows

    monkeypatch.setattr(report, "SCORES_BLOCK_VALUES", 3_000)  # blocks of 1,000 rows
    rng = np.random.default_rng(0)
    classes = ("cat", "dog,2", 'say "hi"')
    result = Result("folder", "", classes)
    n = 2 * 1_000 + 7  # two whole blocks and part of a third
    values = rng.standard_normal((n, 3)) * 10.0 ** rng.integers(-20, 20, (n, 3))
    values[:6, 0] = [0.0, -0.0, 1e16, 1e-5, np.inf, np.nan]
    ids = [f"im,{k}" if k % 5 == 0 else f'q"{k}' if k % 7 == 0 else f"i{k}" for k in range(n)]
    truth = [classes[k % 3] + ("?" if k % 11 == 0 else "") for k in range(n)]
    score_rows(result, "0", ids, values, truth)
    score_rows(result, "1", ids[:50], values[:50].astype(np.float32), truth[:50])
    score_rows(result, "test", ids[:9], values[:9])
    rows = []  # as score_rows built them before: one dict per row, Python floats
    for split, k, part, labelled in (("0", n, values, True),
                                     ("1", 50, values[:50].astype(np.float32), True),
                                     ("test", 9, values[:9], False)):
        for i in range(k):
            row = {"split": split, "id": ids[i], "true": truth[i] if labelled else ""}
            row.update({c: float(part[i, j]) for j, c in enumerate(classes)})
            rows.append(row)
    with open(tmp_path / "want.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report.write_scores(tmp_path / "scores.csv", result)
    assert (tmp_path / "scores.csv").read_bytes() == (tmp_path / "want.csv").read_bytes()
    assert result.scores[:3] == rows[:3]


def test_svm_eval_holds_no_descriptor_when_drawing_the_report(tmp_path, monkeypatch):
    """svm-eval reads rows when a split needs them (`CachedRows`): every array of rows it
    read is freed by the time the report is drawn (a 257-class confusion matrix's image:
    127 MiB), and the caches are closed after the run."""
    import weakref

    from helpers_datasets import small_voc_cache

    from vggfeat.evaluation import report, run
    from vggfeat.features.cache import reader

    read_arrays, alive_at_report, opened = [], [], []
    read, write_report, init = reader.CachedRows.read, report.write_report, \
        reader.CachedRows.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        opened.append(self)

    def recording_read(self, positions):
        rows = read(self, positions)
        read_arrays.append(weakref.ref(rows))
        return rows

    def recording_write_report(*args, **kwargs):
        alive_at_report.append(sum(ref() is not None for ref in read_arrays))
        return write_report(*args, **kwargs)

    monkeypatch.setattr(reader.CachedRows, "__init__", recording_init)
    monkeypatch.setattr(reader.CachedRows, "read", recording_read)
    monkeypatch.setattr(report, "write_report", recording_write_report)
    cache_path = small_voc_cache(tmp_path / "voc")
    done = run.run_svm_eval([cache_path], run.Settings(C=(1.0,), cv=2), out=tmp_path / "out")
    assert (tmp_path / "out" / "results.csv").exists() and done.table
    assert len(read_arrays) >= 2 and alive_at_report == [0]  # training and test rows read
    assert opened and all(not r._readers[0].dataset.id.valid for r in opened)  # closed


def test_rows_on_demand_are_the_rows_read_whole(tmp_path, small_blocks):
    """`CachedRows.read` of any positions (out of order, repeated: persons of one image)
    is exactly those rows of `load_features`, for one cache and two stacked in different
    orders, in blocks of a few rows."""
    first = build_cache(tmp_path / "d.h5", 40, 2, 24)
    second = build_cache(tmp_path / "e.h5", 40, 3, 16, seed=1,
                         order=np.random.default_rng(3).permutation(40))
    positions = np.array([5, 3, 3, 39, 0, 17, 5, 22, 21, 20])
    for paths, aggregate in (([first], "stack"), ([first, second], "avg")):
        ids, whole = cache.load_features(paths, aggregate, block_l2=True)
        rows = cache.CachedRows(paths, aggregate, block_l2=True)
        try:
            assert rows.ids == ids and rows.shape == whole.shape
            np.testing.assert_array_equal(rows.read(positions), whole[positions])
            np.testing.assert_array_equal(rows.read(np.arange(40)[::-1]), whole[::-1])
            assert rows.read(np.array([], dtype=np.int64)).shape == (0, whole.shape[1])
        finally:
            rows.close()


def test_rows_on_demand_repeated_and_far_apart(tmp_path):
    """Rows far apart are read by HDF5's point selection, which takes each row once: a
    repeated row among them is read once and given twice."""
    path = build_cache(tmp_path / "a.h5", 200, 2, 8)
    _, whole = cache.load_features(path, "avg")
    rows = cache.CachedRows(path, "avg")
    try:
        positions = np.array([199, 0, 199, 100, 0])
        np.testing.assert_array_equal(rows.read(positions), whole[positions])
    finally:
        rows.close()


def test_rows_on_demand_from_the_files_opened(tmp_path):
    """A cache replaced under its name while an evaluation reads it (a new extraction):
    the rows read are still the opened file's, never a mix of two extractions."""
    path = build_cache(tmp_path / "a.h5", 30, 2, 8)
    _, whole = cache.load_features(path, "avg")
    rows = cache.CachedRows(path, "avg")
    try:
        replacement = build_cache(tmp_path / "b.h5", 30, 2, 8, seed=5)
        replacement.replace(path)
        np.testing.assert_array_equal(rows.read(np.arange(30)), whole)
    finally:
        rows.close()


def test_on_demand_features_refuse_non_finite_rows_before_use(tmp_path):
    """Rows read on demand are checked finite, all of them, before the first is returned:
    the error names the cache and the row, as the whole read's did."""
    from vggfeat.evaluation import inputs
    from vggfeat.features.cache.integrity import row_checksums

    path = build_cache(tmp_path / "a.h5", 30, 2, 8)
    with h5py.File(path, "r+") as f:  # checksums that agree: a bad extraction, not damage
        row = f["descriptors"][17:18]
        row[0, 0, 3] = np.inf
        f["descriptors"][17] = row[0]
        f["checksums"][17] = row_checksums(row)[0]
    _, features = inputs.load([path], "avg")
    try:
        with pytest.raises(inputs.EvaluationInputError, match=r"a\.h5: 1 images .*img000017"):
            features.rows(["img000001"], "split 0 (train)")
    finally:
        features.close()


def test_on_demand_rows_too_big_refused_by_name(tmp_path, monkeypatch):
    """Training rows that cannot fit are refused before they are read, naming the split and
    the fixes."""
    from vggfeat.evaluation import inputs
    from vggfeat.utils import memory

    path = build_cache(tmp_path / "a.h5", 30, 2, 8)
    _, features = inputs.load([path], "stack")
    monkeypatch.setattr(memory, "available_bytes", lambda: 100)
    try:
        with pytest.raises(TooBigError, match=r"^svm-eval: the 20 rows x 16 float32 of split 0 "
                                              r"\(train\) needs .*\(--aggregate avg\)"):
            features.front([f"img{k:06d}" for k in range(20)], "split 0 (train)")
    finally:
        features.close()


def test_rows_on_demand_give_the_results_of_rows_in_memory(tmp_path):
    """A VOC 2007 protocol run on rows read on demand (svm-eval's way) gives exactly the
    scores and chosen C of the same run on every row read first, in memory."""
    from helpers_datasets import small_voc_cache

    from vggfeat.evaluation import inputs
    from vggfeat.evaluation.protocols import Settings, run_protocol

    path = small_voc_cache(tmp_path / "voc")
    infos, on_demand = inputs.load([path], "avg")
    reader = inputs.open_reader(infos[0])
    settings = Settings(C=(0.1, 1.0, 10.0))  # the protocol's folds
    try:
        lazy = run_protocol(reader, on_demand, settings)
    finally:
        on_demand.close()
    ids, X = cache.load_features(path, "avg")
    whole = run_protocol(reader, inputs.Features(ids, X, [path], own_rows=True), settings)
    assert lazy.chosen_C == whole.chosen_C and lazy.headline == whole.headline
    for a, b in zip(lazy.score_blocks, whole.score_blocks, strict=True):
        assert a.ids == b.ids
        np.testing.assert_array_equal(a.values, b.values)


def test_bad_rows_refused_before_a_protocol_writes_its_splits(tmp_path):
    """Rows are read when a split needs them, but a NaN row is refused before the folder
    protocol writes splits.csv: the refused run leaves no output folder behind."""
    from helpers_datasets import class_descriptors, make_folder_dataset, write_feature_cache

    from vggfeat.data.readers import open_dataset
    from vggfeat.evaluation import inputs, run

    make_folder_dataset(tmp_path / "data", classes=("ant", "bee"), per_class=8, size=(16, 16))
    labels = open_dataset("folder", tmp_path / "data").labels()
    x = class_descriptors(labels.y, dim=8, noise=1.0, seed=1)
    x[5, 0, 2] = np.nan
    path = write_feature_cache(tmp_path / "nan.h5", dataset="folder", root=tmp_path / "data",
                               ids=labels.ids, descriptors=x)
    with pytest.raises(inputs.EvaluationInputError, match=r"nan\.h5: 1 images .*NaN or Inf"):
        run.run_svm_eval([path], run.Settings(C=(1.0,)), out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


MKL_WATCH = """
import importlib.abc, os, sys
seen = []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("MKL_DISABLE_FAST_MM"))
sys.meta_path.insert(0, Watch())
from vggfeat.cli import cli
cli(["svm-eval", sys.argv[1], "--C", "1", "--out", sys.argv[2], "--quiet"], standalone_mode=False)
print(seen)
"""


@pytest.mark.parametrize("user", [None, "0"])
def test_svm_eval_asks_mkl_to_keep_no_buffers_before_torch_loads(tmp_path, user):
    """MKL reads MKL_DISABLE_FAST_MM when torch loads it: svm-eval sets it before its first
    import of torch (its buffers held 62 MiB at the solver's peak), and keeps a user's."""
    from helpers_datasets import class_descriptors, make_folder_dataset, write_feature_cache

    from vggfeat.data.readers import open_dataset

    make_folder_dataset(tmp_path / "data", classes=("ant", "bee"), per_class=6, size=(16, 16))
    labels = open_dataset("folder", tmp_path / "data").labels()
    path = write_feature_cache(tmp_path / "f.h5", dataset="folder", root=tmp_path / "data",
                               ids=labels.ids, descriptors=class_descriptors(labels.y, dim=8))
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    if user is not None:
        env["MKL_DISABLE_FAST_MM"] = user
    done = subprocess.run([sys.executable, "-c", MKL_WATCH, str(path), str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == repr(["1" if user is None else user])
    assert (tmp_path / "out" / "results.csv").exists()
