"""`vggfeat features info|export`: what a cache holds, and its rows out as npy/csv/parquet."""
import importlib.util
import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers_datasets import make_folder_dataset

from vggfeat.cli import cli
from vggfeat.features import load_features
from vggfeat.features.cache import partial_path
from vggfeat.utils.threads import torch_threads


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory, tiny_weights):
    tmp = tmp_path_factory.mktemp("features")
    make_folder_dataset(tmp / "data", classes=("a", "b", "c"), per_class=3)
    out = tmp / "f.h5"
    with torch_threads(1):
        result = run("extract", "--dataset", "folder", "--root", tmp / "data", "--weights",
                     tiny_weights, "--scales", "64,96", "--device", "cpu", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    return out


def test_info_describes_the_cache(cache_file):
    result = run("features", "info", cache_file)
    assert result.exit_code == 0, result.output
    text = result.stdout
    for expected in ("folder", "vgg11", "fc7", "64, 96 (flip-averaged)", "9 rows: 9 done, "
                     "0 failed, 0 pending", "512 per scale: 512 averaged, 1024 stacked",
                     "mean pairwise cosine distance"):
        assert expected in text, text
    summary = json.loads(run("features", "info", cache_file, "--json").stdout)
    assert summary["dimension"] == 512 and summary["scales"] == [64, 96]
    assert summary["groups"]["images"] == {"rows": 9, "done": 9, "failed": 0, "pending": 0,
                                           "scales": 2, "dimension": 512}
    # The statistic agrees with a direct computation: 1 - mean cosine similarity of pairs.
    ids, x = load_features(cache_file, "avg", l2=True)
    sim = x.astype(np.float64) @ x.T.astype(np.float64)
    n = len(x)
    expected = 1 - (sim.sum() - np.trace(sim)) / (n * (n - 1))
    assert summary["variation"] == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_info_computes_the_variation_of_a_cache_that_does_not_store_it(cache_file, tmp_path):
    from vggfeat.features.cache import VARIATION_ATTR

    copy = tmp_path / "old.h5"
    shutil.copy(cache_file, copy)
    with h5py.File(copy, "r+") as f:
        stored = f.attrs.pop(VARIATION_ATTR, None)
    summary = json.loads(run("features", "info", copy, "--json").stdout)
    assert summary["variation_source"] == "computed"
    ids, x = load_features(copy, "avg", l2=True)
    sim = x.astype(np.float64) @ x.T.astype(np.float64)
    expected = 1 - (sim.sum() - np.trace(sim)) / (len(x) * (len(x) - 1))
    assert summary["variation"] == pytest.approx(expected, rel=1e-4, abs=1e-7)
    if stored is not None:
        assert summary["variation"] == pytest.approx(float(stored), rel=1e-5)


def test_info_reads_an_unfinished_extraction(cache_file, tmp_path):
    copy = tmp_path / "g.h5"
    shutil.copy(cache_file, partial_path(copy))
    with h5py.File(partial_path(copy), "r+") as f:
        done = f["done"][()]
        done[:4] = False
        f["done"][...] = done
    result = run("features", "info", copy)
    assert result.exit_code == 0, result.output
    assert "UNFINISHED: 5 of 9 rows done" in result.stdout and "rerun" in result.stdout


def test_info_names_failed_images(cache_file, tmp_path):
    from vggfeat.features.cache import record_failures

    copy = tmp_path / "h.h5"
    shutil.copy(cache_file, copy)
    with h5py.File(copy, "r+") as f:
        f["done"][0] = False
        record_failures(f["/"], {"a/000.jpg": "truncated file"})
    text = run("features", "info", copy).stdout
    assert "8 done, 1 failed, 0 pending" in text and "a/000.jpg: truncated file" in text


def test_info_of_a_missing_or_foreign_file_is_one_line(tmp_path):
    missing = run("features", "info", tmp_path / "nowhere.h5")
    assert missing.exit_code == 2 and "vggfeat extract" in missing.stderr
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    foreign = run("features", "info", other)
    assert foreign.exit_code == 2 and "not a vggfeat feature cache" in foreign.stderr
    assert "Traceback" not in foreign.output


@pytest.mark.parametrize("aggregate", ["avg", "stack"])
def test_export_npy_and_csv_match_load_features(cache_file, tmp_path, aggregate):
    ids, x = load_features(cache_file, aggregate, l2=True)
    npy = tmp_path / "x.npy"
    result = run("features", "export", cache_file, "--to", "npy", "--aggregate", aggregate,
                 "--out", npy)
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(npy), str(tmp_path / "x.ids.txt")]
    np.testing.assert_array_equal(np.load(npy), x)
    assert (tmp_path / "x.ids.txt").read_text().split() == ids
    csv = tmp_path / "x.csv"
    assert run("features", "export", cache_file, "--to", "csv", "--aggregate", aggregate,
               "--out", csv).exit_code == 0
    table = pd.read_csv(csv)
    assert table["id"].tolist() == ids and table.shape[1] == x.shape[1] + 1
    np.testing.assert_allclose(table.drop(columns="id").to_numpy(), x, rtol=1e-6, atol=1e-7)


def test_export_raw_and_default_name_and_no_silent_overwrite(cache_file, tmp_path):
    cache = tmp_path / "c.h5"
    shutil.copy(cache_file, cache)
    result = run("features", "export", cache, "--to", "npy", "--no-l2")
    assert result.exit_code == 0, result.output
    default = tmp_path / "c-avg.npy"  # folder data: the scales are averaged, as svm-eval does
    _, raw = load_features(cache, "avg", l2=False)
    np.testing.assert_array_equal(np.load(default), raw)
    again = run("features", "export", cache, "--to", "npy")
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    assert run("features", "export", cache, "--to", "npy", "--overwrite").exit_code == 0


def test_export_parquet(cache_file, tmp_path):
    out = tmp_path / "x.parquet"
    result = run("features", "export", cache_file, "--to", "parquet", "--out", out)
    if importlib.util.find_spec("pyarrow") or importlib.util.find_spec("fastparquet"):
        assert result.exit_code == 0, result.output
        ids, x = load_features(cache_file, "avg")
        table = pd.read_parquet(out)
        assert table["id"].tolist() == ids
        np.testing.assert_array_equal(table.drop(columns="id").to_numpy(), x)
    else:  # the message says how to get it, and nothing is written
        assert result.exit_code == 2 and "pip install pyarrow" in result.stderr
        assert not out.exists()


def test_export_boxes_of_a_cache_without_boxes(cache_file, tmp_path):
    result = run("features", "export", cache_file, "--to", "npy", "--boxes",
                 "--out", tmp_path / "b.npy")
    assert result.exit_code == 2 and "no person boxes" in result.stderr


def test_a_folder_given_for_the_cache_is_named_as_a_folder(tmp_path):
    (tmp_path / "photos").mkdir()
    result = CliRunner().invoke(cli, ["features", "info", str(tmp_path / "photos"), "--verify"])
    assert result.exit_code == 2, result.output
    assert "is a folder, not a feature file" in result.output
    assert "Traceback" not in result.output
