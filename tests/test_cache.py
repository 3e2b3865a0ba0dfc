"""vggfeat.features.cache: the HDF5 contract, resume, refusal on mismatch, reading back."""
import subprocess
import sys

import h5py
import numpy as np
import pytest
from torch.utils.data import DataLoader

from vggfeat.features import cache
from vggfeat.features.descriptor import DescriptorConfig

PRE = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "channel_order": "RGB",
       "value_scale": 1.0}
IDS = [f"img{k}" for k in range(6)]
DIM = 4


def attrs(dtype="float32", **change):
    config = DescriptorConfig(**{"arch": "vgg16", "weights_sha256": "ab" * 32,
                                 "preprocessing": PRE, "scales": (64, 96), **change})
    return cache.cache_attributes(config, dataset="folder", root="/data/x",
                                  reader_options={"csv": "a.csv"}, dtype=dtype)


def descriptor(k):
    return np.arange(2 * DIM, dtype=np.float32).reshape(2, DIM) + 10 * k


def write(out, rows, failures=(), a=None, ids=IDS):
    partial = cache.open_for_writing(out, a or attrs(), {"/": ids}, DIM, log=lambda m: None)
    writer = cache.RowWriter(partial)
    for k in rows:
        writer.put(k, descriptor(k))
    for k, reason in failures:
        writer.fail(k, reason)
    writer.close()
    return partial


def test_layout_and_attributes_follow_the_contract(tmp_path):
    out = tmp_path / "f.h5"
    partial = write(out, range(5), failures=[(5, "corrupt image data")])
    assert partial.name == "f.h5.partial" and cache.finalize(out) and not partial.exists()
    with h5py.File(out) as f:
        assert [i.decode() for i in f["ids"][()]] == IDS
        assert f["descriptors"].shape == (6, 2, DIM) and f["descriptors"].dtype == np.float32
        assert f["done"][()].tolist() == [True] * 5 + [False]
        assert np.isnan(f["descriptors"][5]).all()
        np.testing.assert_array_equal(f["descriptors"][3], descriptor(3))
        assert [(i.decode(), r.decode()) for i, r in f["failed"][()]] == \
            [("img5", "corrupt image data")]
        for key in ("vggfeat_version", "dataset", "root", "arch", "layer", "weights_sha256",
                    "scales", "flip", "preprocessing", "reader_options", "config_key"):
            assert key in f.attrs, key
        assert f.attrs["scales"].tolist() == [64, 96] and f.attrs["dataset"] == "folder"


def test_not_finalized_until_every_row_is_attempted(tmp_path):
    out = tmp_path / "f.h5"
    write(out, range(3))
    assert not cache.finalize(out) and not out.exists()
    assert cache.pending(cache.partial_path(out)) == [3, 4, 5]


def test_resume_keeps_done_rows_and_retries_failed_ones(tmp_path):
    out = tmp_path / "f.h5"
    write(out, [0, 2], failures=[(1, "truncated")])
    partial = cache.open_for_writing(out, attrs(), {"/": IDS}, DIM)
    assert cache.pending(partial) == [1, 3, 4, 5]
    writer = cache.RowWriter(partial)
    for k in (1, 3, 4, 5):
        writer.put(k, descriptor(k))
    writer.close()
    assert cache.finalize(out)
    assert cache.read_failed(out) == []  # the retried row succeeded
    ids, x = cache.read_descriptors(out)
    assert ids == IDS and np.array_equal(x[2], descriptor(2))


def test_config_mismatch_is_refused_naming_the_difference(tmp_path):
    out = tmp_path / "f.h5"
    write(out, range(6))
    cache.finalize(out)
    with pytest.raises(cache.ConfigMismatchError, match="layer: file has 'fc7', this run 'fc6'"):
        cache.open_for_writing(out, attrs(layer="fc6"), {"/": IDS}, DIM)
    with pytest.raises(cache.ConfigMismatchError, match="dtype"):
        cache.open_for_writing(out, attrs(dtype="float16"), {"/": IDS}, DIM)
    with pytest.raises(cache.ConfigMismatchError, match="1 not in the file"):
        cache.open_for_writing(out, attrs(), {"/": IDS + ["new"]}, DIM)
    assert out.exists()  # refusing touches nothing
    partial = cache.open_for_writing(out, attrs(layer="fc6"), {"/": IDS}, DIM, overwrite=True)
    assert cache.pending(partial) == list(range(6))
    assert h5py.File(out)["descriptors"][0, 0, 0] == 0  # the old file stays until the new ...
    writer = cache.RowWriter(partial)
    for k in range(6):
        writer.put(k, descriptor(k) + 100)
    writer.close()
    assert cache.finalize(out)  # ... one is complete and replaces it
    with h5py.File(out) as f:
        assert f.attrs["layer"] == "fc6" and f["descriptors"][0, 0, 0] == 100


def foreign_files(tmp_path):
    """Files vggfeat did not write, as --out: name -> path."""
    text = tmp_path / "notes.h5"
    text.write_text("my notes\n")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.arange(5)
        f.attrs["owner"] = "someone else"
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 100)
    return {"text": text, "hdf5": other, "damaged": damaged}


@pytest.mark.parametrize("kind", ["text", "hdf5", "damaged"])
def test_a_file_vggfeat_did_not_write_is_never_deleted(tmp_path, kind):
    out = foreign_files(tmp_path)[kind]
    before = out.read_bytes()
    with pytest.raises(cache.NotACacheError, match="is not a vggfeat feature cache") as info:
        cache.open_for_writing(out, attrs(), {"/": IDS}, DIM, log=lambda m: None)
    assert str(out) in str(info.value) and "--overwrite" in str(info.value)
    assert info.value.exit_code == 2
    assert out.read_bytes() == before and not cache.partial_path(out).exists()
    # Asked for explicitly, it is replaced, but only once the new file is complete.
    partial = cache.open_for_writing(out, attrs(), {"/": IDS}, DIM, overwrite=True)
    assert out.read_bytes() == before
    writer = cache.RowWriter(partial)
    for k in range(6):
        writer.put(k, descriptor(k))
    writer.close()
    assert cache.finalize(out) and cache.read_descriptors(out)[0] == IDS
    assert not partial.exists()


def test_a_folder_is_never_replaced(tmp_path):
    out = tmp_path / "f.h5"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    for overwrite in (False, True):
        with pytest.raises(cache.NotACacheError, match="folder"):
            cache.open_for_writing(out, attrs(), {"/": IDS}, DIM, overwrite=overwrite)
    assert (out / "keep.txt").exists()


HOLD_OPEN = """
import sys, h5py
f = h5py.File(sys.argv[1], sys.argv[2])
print("open", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize(("which", "mode"), [("out", "r+"), ("partial", "r+"), ("out", "r")])
def test_a_file_open_in_another_process_is_in_use_not_corrupt(tmp_path, which, mode):
    out = tmp_path / "f.h5"
    write(out, range(6) if which == "out" else range(3))
    if which == "out":
        cache.finalize(out)
    path = out if which == "out" else cache.partial_path(out)
    before = path.read_bytes()
    other = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(path), mode],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "open"
        with pytest.raises(cache.CacheInUseError, match="open in another process") as info:
            partial = cache.open_for_writing(out, attrs(), {"/": IDS}, DIM, log=lambda m: None)
            cache.RowWriter(partial).close()  # a reader only blocks writing
        assert str(path) in str(info.value) or str(cache.partial_path(out)) in str(info.value)
    finally:
        other.communicate("\n", timeout=30)
    assert (out.exists() or cache.partial_path(out).exists())
    kept = out if out.exists() else cache.partial_path(out)
    assert kept.read_bytes() == before  # not deleted, not rewritten


def test_a_broken_partial_file_is_reported_and_restarted(tmp_path):
    out = tmp_path / "f.h5"
    cache.partial_path(out).write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 100)
    messages = []
    partial = cache.open_for_writing(out, attrs(), {"/": IDS}, DIM, log=messages.append)
    assert len(messages) == 1 and "f.h5.partial" in messages[0] and "again" in messages[0]
    assert cache.pending(partial) == list(range(6))


def test_complete_file_is_reopened_and_nothing_redone(tmp_path):
    out = tmp_path / "f.h5"
    write(out, range(6))
    cache.finalize(out)
    partial = cache.open_for_writing(out, attrs(), {"/": IDS}, DIM)
    assert cache.pending(partial) == [] and cache.finalize(out)


def test_shards_are_merged_and_foreign_shards_dropped(tmp_path):
    out = tmp_path / "f.h5"
    write(out, [0])
    shard = cache.create_shard(out, 1, "/", attrs(), IDS, [1, 3, 5], DIM)
    writer = cache.RowWriter(shard)
    writer.put(5, descriptor(5))
    writer.put(1, descriptor(1))
    writer.fail(3, "empty file")
    writer.close()
    foreign = cache.create_shard(out, 2, "/", attrs(layer="fc6"), IDS, [2], DIM)
    writer = cache.RowWriter(foreign)
    writer.put(2, descriptor(2))
    writer.close()
    messages = []
    assert cache.merge_shards(out, messages.append) == 2
    assert not shard.exists() and not foreign.exists() and "another configuration" in messages[0]
    partial = cache.partial_path(out)
    assert cache.pending(partial) == [2, 3, 4]
    assert cache.read_failed(partial) == [("img3", "empty file")]
    with pytest.warns(UserWarning, match="3 rows have no descriptor"):
        ids, x = cache.read_descriptors(partial)
    assert ids == ["img0", "img1", "img5"] and np.array_equal(x[2], descriptor(5))


def test_float16_storage(tmp_path):
    out = tmp_path / "f.h5"
    write(out, range(6), a=attrs(dtype="float16"))
    cache.finalize(out)
    with h5py.File(out) as f:
        assert f["descriptors"].dtype == np.float16
    assert cache.load_features(out)[1].dtype == np.float32


def make_complete(path, ids, descriptors):
    partial = cache.open_for_writing(path, attrs(), {"/": ids}, descriptors.shape[-1])
    writer = cache.RowWriter(partial)
    for k, row in enumerate(descriptors):
        writer.put(k, row)
    writer.close()
    assert cache.finalize(path)


def test_load_features_aggregates_and_normalises(tmp_path):
    rng = np.random.default_rng(0)
    d = rng.random((6, 2, DIM)).astype(np.float32)
    make_complete(tmp_path / "a.h5", IDS, d)
    ids, avg = cache.load_features(tmp_path / "a.h5", "avg", l2=False)
    np.testing.assert_allclose(avg, (d[:, 0] + d[:, 1]) / 2, rtol=1e-6)
    _, stack = cache.load_features(tmp_path / "a.h5", "stack", l2=True)
    flat = np.concatenate([d[:, 0], d[:, 1]], axis=1)
    np.testing.assert_allclose(stack, flat / np.linalg.norm(flat, axis=1, keepdims=True),
                               rtol=1e-6)
    assert ids == IDS and stack.dtype == np.float32
    with pytest.raises(ValueError, match="aggregate"):
        cache.load_features(tmp_path / "a.h5", "max")


def test_several_files_are_stacked_aligned_by_id(tmp_path):
    rng = np.random.default_rng(1)
    d, e = rng.random((6, 2, DIM)), rng.random((6, 2, 3))
    order = [3, 0, 5, 1, 4, 2]
    make_complete(tmp_path / "d.h5", IDS, d.astype(np.float32))
    make_complete(tmp_path / "e.h5", [IDS[k] for k in order], e[order].astype(np.float32))
    ids, x = cache.load_features([tmp_path / "d.h5", tmp_path / "e.h5"], "avg", l2=False)
    assert ids == IDS and x.shape == (6, DIM + 3)
    np.testing.assert_allclose(x[:, DIM:], e.mean(1), rtol=1e-6)
    _, blocks = cache.load_features([tmp_path / "d.h5", tmp_path / "e.h5"], "avg", l2=False,
                                    block_l2=True)
    np.testing.assert_allclose(np.linalg.norm(blocks[:, :DIM], axis=1), 1, rtol=1e-6)
    make_complete(tmp_path / "f.h5", IDS[:5], d[:5].astype(np.float32))
    with pytest.raises(cache.CacheError, match="different images"):
        cache.load_features([tmp_path / "d.h5", tmp_path / "f.h5"])


def test_failed_rows_are_left_out_with_a_warning(tmp_path):
    out = tmp_path / "f.h5"
    write(out, [0, 1, 2, 4, 5], failures=[(3, "corrupt")])
    cache.finalize(out)
    with pytest.warns(UserWarning, match="1 rows have no descriptor"):
        ids, x = cache.load_features(out)
    assert ids == ["img0", "img1", "img2", "img4", "img5"] and x.shape == (5, DIM)


def test_missing_file_says_an_extraction_was_interrupted(tmp_path):
    write(tmp_path / "f.h5", [0])
    with pytest.raises(cache.CacheError, match="interrupted|unfinished"):
        cache.load_features(tmp_path / "f.h5")


def test_feature_dataset_opens_lazily_in_workers(tmp_path):
    d = np.random.default_rng(2).random((6, 2, DIM)).astype(np.float32)
    make_complete(tmp_path / "a.h5", IDS, d)
    dataset = cache.FeatureDataset(tmp_path / "a.h5")
    assert dataset._file is None and len(dataset) == 6
    loaded = list(DataLoader(dataset, batch_size=None, num_workers=2))
    assert [i for i, _ in loaded] == IDS
    np.testing.assert_array_equal(np.stack([x.numpy() for _, x in loaded]), d)
