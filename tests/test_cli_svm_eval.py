"""`vggfeat svm-eval` through click's CliRunner, on real HDF5 caches of generated layouts."""
import csv
import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from helpers_datasets import (
    class_descriptors,
    make_caltech,
    make_voc,
    voc_descriptors,
    write_feature_cache,
)

from vggfeat.cli import cli
from vggfeat.data.readers import open_dataset

FAST = ["--C", "0.1,1,10", "-q"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _invoke(*args):
    return CliRunner().invoke(cli, ["svm-eval", *map(str, args)])


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """A VOC 2007 layout and two caches of its images (as Net-D and Net-E)."""
    base = tmp_path_factory.mktemp("voc")
    data, ids, x = voc_descriptors(base, {"train": 30, "val": 30, "test": 40}, dim=40, scales=2)
    d = write_feature_cache(base / "d.h5", dataset="voc2007", root=data.root, ids=ids,
                            descriptors=x, arch="vgg16")
    e = write_feature_cache(base / "e.h5", dataset="voc2007", root=data.root, ids=ids,
                            descriptors=x[:, :, ::-1] + 0.01, arch="vgg19")
    return data, ids, x, d, e


def test_help():
    result = CliRunner().invoke(cli, ["svm-eval", "--help"])
    assert result.exit_code == 0
    assert "--solver" in result.output and "Example" in result.output


def test_voc07_end_to_end_writes_every_output(voc, tmp_path):
    data, _, _, d, _ = voc
    out = tmp_path / "out"
    result = _invoke(d, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    assert "mAP (VOC07 11-point)" in result.output and "mAP (VOC2010+)" in result.output
    assert "paper (Net-D) 89.3" in result.output
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 20 and float(np.mean([float(r["ap_voc07"]) for r in rows])) > 0.9
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "voc2007" and summary["settings"]["C"] == [0.1, 1.0, 10.0]
    assert set(summary["chosen_C"]["test"]) == set(r["class"] for r in rows)
    assert summary["headline"]["headline"] == "mAP_voc07"
    with (out / "scores.csv").open() as fh:
        scores = list(csv.DictReader(fh))
    assert [r["id"] for r in scores] == data.ids["test"] and "cat" in scores[0]
    assert (out / "pr_test.png").stat().st_size > 1000


def test_two_nets_are_stacked_and_compared_with_d_and_e(voc, tmp_path):
    _, _, _, d, e = voc
    result = _invoke(d, e, "--out", tmp_path / "de", "--C", "1")
    assert result.exit_code == 0, result.output
    assert "paper (Net-D&E) 89.7" in result.output


def test_nan_descriptors_fail_before_fitting(voc, tmp_path):
    data, ids, x, _, _ = voc
    bad = x.copy()
    bad[4, 1, 7] = np.nan
    path = write_feature_cache(tmp_path / "nan.h5", dataset="voc2007", root=data.root, ids=ids,
                               descriptors=bad)
    result = _invoke(path, "--out", tmp_path / "out", *FAST)
    assert result.exit_code == 2
    assert "nan.h5" in result.output and "NaN or Inf" in result.output and ids[4] in result.output
    assert not (tmp_path / "out").exists()


def test_caches_of_different_datasets_or_images_are_refused(voc, tmp_path):
    data, ids, x, d, _ = voc
    other = write_feature_cache(tmp_path / "other.h5", dataset="voc2007", root=tmp_path,
                                ids=ids, descriptors=x)
    result = _invoke(d, other, "--out", tmp_path / "o", *FAST)
    assert result.exit_code == 2 and "other.h5" in result.output and "same images" in result.output
    fewer = write_feature_cache(tmp_path / "fewer.h5", dataset="voc2007", root=data.root,
                                ids=ids[1:], descriptors=x[1:])
    result = _invoke(d, fewer, "--out", tmp_path / "o", *FAST)
    assert result.exit_code == 2 and "different images" in result.output


def test_images_without_descriptor_are_left_out_and_named(voc, tmp_path):
    data, ids, x, _, _ = voc
    done = np.ones(len(ids), bool)
    done[-1] = done[3] = False  # e.g. images that failed to decode (extract --skip-bad)
    path = write_feature_cache(tmp_path / "partial.h5", dataset="voc2007", root=data.root,
                               ids=ids, descriptors=x, done=done)
    with h5py.File(path, "a") as f:
        f["failed"].resize((1,))
        f["failed"][0] = (ids[-1], "cannot identify image file")
    with pytest.warns(UserWarning, match="2 rows have no descriptor"):
        result = _invoke(path, "--out", tmp_path / "o", *FAST)
    assert result.exit_code == 0, result.output
    assert "2 image(s) without a descriptor are left out" in result.output
    assert f"{ids[-1]} (cannot identify image file)" in result.output and ids[3] in result.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["left_out"] == {"count": 2, "ids": {ids[3]: "no descriptor",
                                                       ids[-1]: "cannot identify image file"}}
    scored = {r["id"] for r in csv.DictReader((tmp_path / "o" / "scores.csv").open())}
    left = {ids[3], ids[-1]}
    assert not scored & left and scored == set(data.ids["test"]) - left
    # a rerun into the same folder is the same run (left_out is not a setting)
    with pytest.warns(UserWarning):
        assert _invoke(path, "--out", tmp_path / "o", *FAST).exit_code == 0
    with pytest.warns(UserWarning):
        strict = _invoke(path, "--out", tmp_path / "s", "--strict", *FAST)
    assert strict.exit_code == 2
    assert ids[3] in strict.output and "vggfeat extract" in strict.output
    assert "without --strict" in strict.output


def test_class_without_positive_and_moved_dataset(tmp_path):
    data = make_voc(tmp_path / "data", "2007", {"train": 12, "val": 12, "test": 12})
    ids = [s.id for s in open_dataset("voc2007", data.root).images()]
    x = np.abs(np.random.default_rng(0).normal(size=(len(ids), 1, 16)))
    path = write_feature_cache(tmp_path / "c.h5", dataset="voc2007", root=data.root, ids=ids,
                               descriptors=x)
    main = data.root / "VOCdevkit/VOC2007/ImageSets/Main"
    (main / "bus_trainval.txt").write_text("".join(f"{i} -1\n" for i in data.ids["trainval"]))
    result = _invoke(path, "--out", tmp_path / "o", *FAST)
    assert result.exit_code == 2 and "bus have no positive training example" in result.output
    moved = tmp_path / "moved"
    data.root.rename(moved)
    result = _invoke(path, "--out", tmp_path / "o", *FAST)
    assert result.exit_code == 2 and "--root" in result.output
    result = _invoke(path, "--root", moved, "--out", tmp_path / "o", *FAST)
    assert result.exit_code == 2 and "bus have no positive" in result.output  # found again


def test_caltech_splits_file_repeats_a_run(tmp_path):
    data = make_caltech(tmp_path / "data", "256", per_class=9)
    x = class_descriptors(data.labels["all"], dim=24, scales=3, noise=0.4)
    path = write_feature_cache(tmp_path / "cal.h5", dataset="caltech256", root=data.root,
                               ids=data.ids["all"], descriptors=x, arch="vgg19")
    first = _invoke(path, "--out", tmp_path / "a", "--train-per-class", "6", "--seed", "3", *FAST)
    assert first.exit_code == 0, first.output
    assert "mean class recall" in first.output and "paper (Net-E) 85.1 +- 0.3" in first.output
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["settings"]["aggregate"] == "stack"  # Caltech's default
    again = _invoke(path, "--out", tmp_path / "b", "--splits-file", tmp_path / "a" / "splits.csv",
                    *FAST)
    assert again.exit_code == 0, again.output
    # The same file as a spreadsheet saves it: a byte-order mark and CRLF line ends.
    saved = tmp_path / "saved.csv"
    saved.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "a" / "splits.csv").read_text()
                      .replace("\r\n", "\n").replace("\n", "\r\n").encode())
    again = _invoke(path, "--out", tmp_path / "c", "--splits-file", saved, *FAST)
    assert again.exit_code == 0, again.output
    results = [(tmp_path / run / "results.csv").read_text() for run in ("a", "b", "c")]
    assert results[0] == results[1] == results[2]


def test_bad_options_are_refused(voc, tmp_path):
    _, _, _, d, _ = voc
    assert _invoke(d, "--C", "0,1").exit_code == 2
    for bad in ("nan", "inf", "-1", "1,nan"):
        result = _invoke(d, "--C", bad)
        assert result.exit_code == 2 and "positive finite" in result.output, bad
    assert _invoke(d, "--cv", "1").exit_code == 2
    (tmp_path / "results.csv").write_text("split,class,C\n0,cat,1\n")
    result = _invoke(d, "--splits-file", tmp_path / "results.csv")
    assert result.exit_code == 2 and "not a splits file" in result.output
    result = _invoke(d, "--cv", "50", "--out", tmp_path / "cv", *FAST)
    assert result.exit_code == 2 and "--cv 50" in result.output and "too few" in result.output
    assert not (tmp_path / "cv").exists()
    result = _invoke(tmp_path / "nope.h5")
    assert result.exit_code == 2 and "nope.h5" in result.output
    assert "vggfeat extract" in result.output
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = [1]
    result = _invoke(tmp_path / "plain.h5")
    assert result.exit_code == 2 and "not a vggfeat feature cache" in result.output


def test_the_library_call_is_the_whole_cli_run(voc, tmp_path):
    """`run_svm_eval` is svm-eval: the same files and table, messages through `echo`, and
    the same refusal of a folder holding another run's results."""
    from vggfeat.evaluation import Settings, run_svm_eval
    from vggfeat.evaluation.output_folder import OutputFolderError

    _, _, _, d, _ = voc
    said = []
    run = run_svm_eval([d], Settings(C=(0.1, 1.0, 10.0)), out=tmp_path / "lib",
                       echo=lambda text, err=False: said.append((err, text)))
    by_cli = _invoke(d, "--out", tmp_path / "cli", *FAST)
    assert by_cli.exit_code == 0, by_cli.output
    for name in ("results.csv", "scores.csv"):
        assert (tmp_path / "lib" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()
    assert (False, run.table) in said and run.table in by_cli.output
    assert f"wrote {len(run.files)} files" in by_cli.output
    assert run.result.headline["headline"] == "mAP_voc07" and run.paper["net"] == "D"
    with pytest.raises(OutputFolderError, match="other options"):
        run_svm_eval([d], Settings(C=(1.0,)), out=tmp_path / "lib")


def test_probe_svm_is_the_default_and_changes_nothing(voc, tmp_path):
    """`--probe svm` writes the very files of a run without --probe (summary.json too: no
    probe key, the SVM's chosen C as before); a folder written before the other probes
    existed takes the rerun."""
    _, _, _, d, _ = voc
    for name, extra in (("plain", ()), ("svm", ("--probe", "svm"))):
        result = _invoke(d, "--out", tmp_path / name, *FAST, *extra)
        assert result.exit_code == 0, result.output
    for name in ("results.csv", "scores.csv", "summary.json", "comp1_cls_test_cat.txt"):
        if (tmp_path / "plain" / name).exists():
            assert (tmp_path / "plain" / name).read_bytes() == \
                (tmp_path / "svm" / name).read_bytes(), name
    summary = json.loads((tmp_path / "svm" / "summary.json").read_text())
    assert "probe" not in summary and "chosen" not in summary and "chosen_C" in summary
    assert not {"probe", "k", "test_from"} & set(summary["settings"])
    assert _invoke(d, "--out", tmp_path / "plain", "--probe", "svm", *FAST).exit_code == 0


def test_other_probes_record_their_choice_and_refuse_bad_lists(voc, tmp_path):
    _, _, _, d, _ = voc
    result = _invoke(d, "--probe", "knn", "--out", tmp_path / "knn", "-q")
    assert result.exit_code == 0, result.output
    assert "kNN on trainval" in result.output
    assert "(the paper's figures are SVMs')" in result.output
    summary = json.loads((tmp_path / "knn" / "summary.json").read_text())
    assert summary["probe"] == "knn" and summary["paper"] is None
    assert all(set(v) == {"k"} for v in summary["chosen"]["test"].values())
    assert summary["settings"]["k"] == [1, 5, 10, 20, 50, 100] and "C" not in summary["settings"]
    # Another probe's results are another run: the folder is not mixed.
    result = _invoke(d, "--probe", "logreg", "--out", tmp_path / "knn", "-q")
    assert result.exit_code == 2 and "probe" in result.output
    for option, bad in (("--probe", "svm,forest"), ("--probe", ""), ("--train-per-class", "0,2"),
                        ("--train-per-class", "1,two")):
        result = _invoke(d, option, bad, "--out", tmp_path / "bad")
        assert result.exit_code == 2 and option in result.output, (option, bad)
    assert not (tmp_path / "bad").exists()


def test_a_plot_that_cannot_be_drawn_is_a_warning_not_a_failed_run(tmp_path, monkeypatch):
    """The results are written before any plot; a plot that raises (here after leaving
    half a file) is one warning naming it, is not left behind, and is not listed."""
    from vggfeat.evaluation import report

    data = make_caltech(tmp_path / "data", "101", per_class=8)
    x = class_descriptors(data.labels["all"], dim=16, scales=1, noise=0.4)
    path = write_feature_cache(tmp_path / "c.h5", dataset="caltech101", root=data.root,
                               ids=data.ids["all"], descriptors=x)

    def broken_plot(result, out):
        (out / "recall.png").write_bytes(b"\x89PNG half")  # what a crash mid-write leaves
        raise ValueError("'xerr' must not contain negative values")

    monkeypatch.setattr(report, "plot_recall", broken_plot)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["svm-eval", str(path), "--out", str(out),
                                      "--train-per-class", "5", *FAST])
    assert result.exit_code == 0, result.output
    assert "warning: recall.png was not drawn (ValueError: 'xerr' must not contain" \
        in result.output
    assert not (out / "recall.png").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert "recall.png" not in summary["files"]
    for name in ("results.csv", "scores.csv", "splits.csv", "confusion.csv",
                 "confusion.png"):
        assert name in summary["files"] and (out / name).stat().st_size > 0
