"""Files written by vggfeat before the package was restructured still load and give the
same numbers: a backbone, a training run folder (checkpoint), a feature cache and an
svm-eval output folder, all made by `tests/fixtures/legacy/make_fixtures.sh` at commit
69117d5 and kept as they were written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from helpers_training import run_cli

LEGACY = Path(__file__).parent / "fixtures" / "legacy"


def ok(result):
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """The same digits the fixtures were made from (make-digits is seeded)."""
    out = tmp_path_factory.mktemp("digits") / "digits"
    ok(run_cli(["datasets", "make-digits", out, "--size", 32, "--per-class", 12, "--seed", 0]))
    return out


def test_backbone_and_checkpoint_load_to_the_same_net():
    from vggfeat.models import load_backbone

    from_file = load_backbone(LEGACY / "run" / "backbone.pth")
    from_run = load_backbone(LEGACY / "run")
    assert type(from_file) is type(from_run)
    for (name, a), (_, b) in zip(from_file.state_dict().items(), from_run.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


def test_legacy_backbone_extracts_the_legacy_cache(digits, tmp_path):
    out = tmp_path / "cache.h5"
    ok(run_cli(["extract", "--dataset", "folder", "--root", digits / "transfer", "--weights",
             LEGACY / "run" / "backbone.pth", "--scales", "32,48", "--layer", "fc7",
             "--device", "cpu", "--out", out, "--quiet"]))
    with h5py.File(LEGACY / "cache.h5", "r") as old, h5py.File(out, "r") as new:
        names = sorted(k for k in old.keys() if isinstance(old[k], h5py.Dataset))
        new_names = {k for k in new.keys() if isinstance(new[k], h5py.Dataset)}
        # the same datasets, plus the row checksums added in issue 19
        assert new_names - set(names) == {"checksums"} and set(names) <= new_names
        assert [k for k in old.attrs if k not in new.attrs] == []
        for name in names:
            a, b = old[name][()], new[name][()]
            if a.dtype.kind == "f":
                np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=name)
            else:
                np.testing.assert_array_equal(b, a, err_msg=name)


def test_legacy_cache_evaluates_to_the_legacy_results(digits, tmp_path):
    cache = tmp_path / "cache.h5"
    shutil.copy(LEGACY / "cache.h5", cache)
    out = tmp_path / "svm_eval"
    ok(run_cli(["svm-eval", cache, "--aggregate", "stack", "--train-per-class", 6,
             "--test-per-class", 6, "--splits", 2, "--seed", 0, "--root", digits / "transfer",
             "--out", out, "--quiet"]))
    for name in ("results.csv", "splits.csv", "confusion.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(out / name),
                                      pd.read_csv(LEGACY / "svm_eval" / name), obj=name)
    scores, old_scores = pd.read_csv(out / "scores.csv"), pd.read_csv(LEGACY / "svm_eval" /
                                                                       "scores.csv")
    pd.testing.assert_frame_equal(scores, old_scores, rtol=1e-4, atol=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    old = json.loads((LEGACY / "svm_eval" / "summary.json").read_text())
    assert summary.keys() == old.keys()
    for key, value in old["headline"].items():
        assert summary["headline"][key] == (value if isinstance(value, str)
                                            else pytest.approx(value)), key
    assert summary["chosen_C"] == old["chosen_C"]


def test_legacy_svm_eval_folder_compares(tmp_path):
    folder = tmp_path / "run_a"
    shutil.copytree(LEGACY / "svm_eval", folder)
    result = ok(run_cli(["compare", folder, "--out", tmp_path / "compared"]))
    assert "65.0" in result.output
    table = pd.read_csv(tmp_path / "compared" / "compare.csv")
    assert len(table) == 1


def test_legacy_run_folder_evaluates_to_the_legacy_figures(digits, tmp_path):
    out = tmp_path / "eval.json"
    ok(run_cli(["eval-backbone", "--root", digits / "backbone" / "val", "--weights",
             LEGACY / "run", "--scales", "32,40", "--method", "both", "--device", "cpu",
             "--workers", 0, "--json", out, "--quiet"]))
    assert json.loads(out.read_text()) == json.loads((LEGACY / "eval_backbone.json")
                                                     .read_text())
