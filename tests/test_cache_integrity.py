"""Issue 19, items 4 and 5: row checksums in the feature cache, and finishing in place.

Damage is real: bytes flipped on disk inside a finished cache's descriptor data (the
dataset's offset from h5py, then a raw write into the file), then every read path is run.
Kills during finishing are real SIGKILLs of a forked writer.
"""
import os
import shutil
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from helpers_datasets import make_folder_dataset
from helpers_features import assert_same_cache

from vggfeat.cli import cli
from vggfeat.features import FeatureDataset, cache, load_features
from vggfeat.features.cache.inplace import journal_path

LEGACY_CACHE = Path(__file__).parent / "fixtures" / "legacy" / "cache.h5"
LAYERS = "conv5_2,fc7"  # two layers: ``descriptors`` and ``layers/fc7``


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def extract_args(root: Path, weights, out: Path) -> list:
    return ["extract", "--dataset", "folder", "--root", root, "--weights", weights,
            "--scales", "64", "--layer", LAYERS, "--device", "cpu", "--quiet", "--out", out]


@pytest.fixture(scope="module")
def extracted(tiny_weights, tmp_path_factory):
    """(dataset folder, a finished two-layer cache of it) made by `vggfeat extract`."""
    base = tmp_path_factory.mktemp("integrity")
    make_folder_dataset(base / "data", classes=("a", "b"), per_class=4)
    out = base / "good.h5"
    done = invoke(*extract_args(base / "data", tiny_weights, out))
    assert done.exit_code == 0, done.output
    return base / "data", out


def flip_byte(path: Path, dataset: str, row: int) -> str:
    """XOR one byte inside row `row` of `dataset` on disk; returns the row's id."""
    with h5py.File(path, "r") as f:
        rows = f[dataset]
        row_bytes = int(np.prod(rows.shape[1:])) * rows.dtype.itemsize
        offset = rows.id.get_offset() + row * row_bytes + row_bytes // 2
        row_id = f["ids"][row].decode()
    with open(path, "r+b") as raw:
        raw.seek(offset)
        byte = raw.read(1)
        raw.seek(offset)
        raw.write(bytes([byte[0] ^ 0x10]))
    return row_id


def damaged_copy(extracted, tmp_path, dataset="descriptors", row=2) -> tuple[Path, str]:
    path = tmp_path / "damaged.h5"
    shutil.copy(extracted[1], path)
    return path, flip_byte(path, dataset, row)


def assert_names_damage(text: str, path: Path, row_id: str) -> None:
    assert str(path) in text and "1 row(s) damaged" in text and row_id in text, text
    assert "--redo-damaged" in text and "Traceback" not in text, text


def test_a_finished_cache_verifies(extracted):
    result = invoke("features", "info", extracted[1], "--verify")
    assert result.exit_code == 0, result.output
    assert "checksums OK (8 rows verified)" in result.output
    assert cache.verify(extracted[1]).ok


def test_every_read_path_refuses_a_flipped_byte(extracted, tiny_weights, tmp_path):
    path, row_id = damaged_copy(extracted, tmp_path)
    for read in (lambda: load_features(path), lambda: cache.read_descriptors(path),
                 lambda: cache.read_done_rows(path)):
        with pytest.raises(cache.DamagedCacheError) as error:
            read()
        assert_names_damage(str(error.value), path, row_id)
    rows = FeatureDataset(path)
    rows[1]  # an intact row reads; the damaged one is refused when it is read
    with pytest.raises(cache.DamagedCacheError, match=row_id):
        rows[2]
    commands = {
        "info --verify": ("features", "info", path, "--verify"),
        "export": ("features", "export", path, "--to", "npy", "--out", tmp_path / "x.npy"),
        "svm-eval": ("svm-eval", path, "--out", tmp_path / "eval", "--quiet"),
        "extract (resume)": extract_args(extracted[0], tiny_weights, path),
    }
    for name, args in commands.items():
        result = invoke(*args)
        assert result.exit_code == 2, (name, result.output)
        assert_names_damage(result.output, path, row_id)
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "eval" / "summary.json").exists()


def test_a_second_layer_is_checked_row_by_row(extracted, tmp_path):
    path, row_id = damaged_copy(extracted, tmp_path, "layers/fc7", row=5)
    load_features(path)  # the first layer is intact and reads
    with pytest.raises(cache.DamagedCacheError, match=row_id):
        load_features(path, layer="fc7")
    assert cache.verify(path).damaged == {"/": [row_id]}


def test_redo_damaged_recomputes_the_rows_in_place(extracted, tiny_weights, tmp_path):
    path, row_id = damaged_copy(extracted, tmp_path)
    flip_byte(path, "layers/fc7", 6)
    result = invoke(*extract_args(extracted[0], tiny_weights, path), "--redo-damaged")
    assert result.exit_code == 0, result.output
    assert "2 damaged row(s) will be computed again" in result.output
    assert "8 images (2 computed this run" in result.output
    assert cache.verify(path).ok
    assert_same_cache(path, extracted[1])


def test_a_cache_from_an_older_vggfeat_still_reads(tmp_path):
    result = invoke("features", "info", LEGACY_CACHE, "--verify")
    assert result.exit_code == 0, result.output
    assert "no checksums (written by an older vggfeat)" in result.output
    assert load_features(LEGACY_CACHE)[1].shape[0] > 0


# -- finishing in place ------------------------------------------------------------------

IDS = [f"img{k}" for k in range(300)]


def _attrs():
    from vggfeat.features.descriptor import DescriptorConfig

    pre = {"mean": [0.5] * 3, "std": [0.25] * 3, "channel_order": "RGB", "value_scale": 1.0}
    config = DescriptorConfig(arch="vgg16", weights_sha256="cd" * 32, preprocessing=pre,
                              scales=(64, 96))
    return cache.cache_attributes(config, dataset="folder")


ROWS = np.random.default_rng(0).random((len(IDS), 2, 1024)).astype(np.float32)


def _partial(out: Path, attrs: dict, missing=(5, 6)) -> Path:
    partial = cache.open_for_writing(out, attrs, {"/": IDS}, 1024, log=lambda m: None)
    writer = cache.RowWriter(partial, flush_every=100)
    for k in range(len(IDS)):
        if k not in missing:
            writer.put(k, ROWS[k])
    writer.close()
    return partial


def _finishing(out: Path, attrs: dict, labels) -> None:
    """What the end of a run writes into OUT.partial: failures, a shard, labels, the
    statistic (and, in `extract_to_cache`, the rename that follows)."""
    writer = cache.RowWriter(cache.partial_path(out))
    writer.fail(5, "cannot identify image file")
    writer.close()
    shard = cache.create_shard(out, 1, "/", attrs, IDS, [6], 1024)
    writer = cache.RowWriter(shard)
    writer.put(6, ROWS[6])
    writer.close()
    cache.merge_shards(out, lambda m: None)
    cache.write_labels(cache.partial_path(out), ["a", "b"], labels)
    cache.store_variation(cache.partial_path(out))


def test_finishing_writes_into_the_partial_and_renames_it(tmp_path):
    out, attrs = tmp_path / "f.h5", _attrs()
    partial = _partial(out, attrs)
    inode = partial.stat().st_ino
    labels = np.where(np.arange(len(IDS))[:, None] % 2 == np.arange(2), 1, -1)
    _finishing(out, attrs, labels)
    assert cache.finalize(out)
    assert out.stat().st_ino == inode  # the same file: nothing was copied
    assert not journal_path(partial).exists()
    assert cache.verify(out).ok and cache.read_failed(out) == [
        ("img5", "cannot identify image file")]
    np.testing.assert_array_equal(cache.read_labels(out)[2], labels)
    with h5py.File(out) as f:
        assert np.isfinite(f.attrs[cache.VARIATION_ATTR])
        np.testing.assert_array_equal(f["descriptors"][()][f["done"][()]],
                                      np.delete(ROWS, 5, axis=0))


def _finishing_forever(out: Path, attrs: dict):
    k = 0
    while True:
        labels = np.where((np.arange(len(IDS))[:, None] + k) % 2 == np.arange(2), 1, -1)
        _finishing(out, attrs, labels)
        with h5py.File(cache.partial_path(out), "r+") as f:  # undo the merge, to redo it
            f["done"][6] = False
        k += 1


def test_a_kill_during_finishing_leaves_a_partial_that_a_rerun_finishes(tmp_path):
    import multiprocessing

    fork = multiprocessing.get_context("fork")
    out, attrs = tmp_path / "k.h5", _attrs()
    partial = _partial(out, attrs)
    killed_mid_change = 0
    # Kills at random moments, until several have landed inside a change (how many do
    # depends on the machine's load: keep going, up to 40).
    for tries, delay in enumerate(np.random.default_rng(3).uniform(0.05, 0.8, 40)):
        if tries >= 8 and killed_mid_change >= 2:
            break
        child = fork.Process(target=_finishing_forever, args=(out, attrs), daemon=True)
        child.start()
        time.sleep(delay)
        assert child.is_alive()
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        killed_mid_change += journal_path(partial).exists()
        for shard in cache.shard_paths(out):
            shard.unlink()  # a shard being written when killed: its rows are redone
        again = cache.open_for_writing(out, attrs, {"/": IDS}, 1024, log=lambda m: None)
        assert not journal_path(partial).exists()
        with h5py.File(again) as f:  # whole again: every row kept, verified
            done = f["done"][()]
            assert done.sum() >= len(IDS) - 2 and not done[5]
            np.testing.assert_array_equal(f["descriptors"][()][done], ROWS[done])
        assert cache.verify(again).ok
    _finishing(out, attrs, np.ones((len(IDS), 2), dtype=np.int8))
    assert cache.finalize(out) and cache.verify(out).ok
    assert killed_mid_change > 0  # some kills did land inside an in-place change


def _finish_on_a_full_disk(out: Path, attrs: dict, limit: int):
    import resource

    from vggfeat.utils.atomic import DiskFullError

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        _finishing(out, attrs, np.ones((len(IDS), 2), dtype=np.int8))
    except DiskFullError as error:
        os._exit(7 if str(cache.partial_path(out)) in str(error) else 1)
    os._exit(0)


def test_a_full_disk_while_finishing_keeps_the_partial_whole(tmp_path):
    import multiprocessing

    out, attrs = tmp_path / "full.h5", _attrs()
    partial = _partial(out, attrs)
    before = partial.read_bytes()
    # the partial may not grow (its journal, far smaller, may be written)
    child = multiprocessing.get_context("fork").Process(
        target=_finish_on_a_full_disk, args=(out, attrs, partial.stat().st_size))
    child.start()
    child.join()
    assert child.exitcode == 7  # DiskFullError naming the partial
    assert partial.read_bytes() == before and not journal_path(partial).exists()
    _finishing(out, attrs, np.ones((len(IDS), 2), dtype=np.int8))  # space freed: it finishes
    assert cache.finalize(out) and cache.verify(out).ok


def test_a_damaged_row_of_a_shard_is_not_merged(tmp_path):
    out, attrs = tmp_path / "s.h5", _attrs()
    partial = _partial(out, attrs)
    shard = cache.create_shard(out, 1, "/", attrs, IDS, [5, 6], 1024)
    writer = cache.RowWriter(shard)
    writer.put(5, ROWS[5])
    writer.put(6, ROWS[6])
    writer.close()
    assert flip_byte(shard, "descriptors", 0) == "img5"
    assert cache.merge_shards(out, lambda m: None) == 1
    assert cache.pending(partial) == [5] and cache.verify(partial).ok
