"""vggfeat never replaces a file it did not write: train-backbone, svm-eval and
eval-localisation refuse an --out that holds someone else's files (exit 2, nothing changed),
keep working on their own folders, and clean only their own stale temporary files."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_datasets import small_voc_cache
from helpers_localisation import make_loc_csv
from helpers_training import TINY_OPTIONS, run_cli
from test_localisation import CROP, classifier_file, constant_box_net

from vggfeat.evaluation import output_folder
from vggfeat.utils.threads import torch_threads


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def users_folder(folder: Path, names) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(f"the user's own {name}\n")
    return snapshot(folder)


# -- train-backbone ------------------------------------------------------------------------

def train(out, *extra):
    return run_cli(["train-backbone", "--synthetic", "--synthetic-size", "16", "--num-classes",
                    "2", "--out", out, *TINY_OPTIONS, "--batch-size", "8", "--max-steps", "1",
                    *map(str, extra)])


@pytest.mark.parametrize("names", [("config.json", "log.jsonl", "backbone.pth"),
                                   ("notes.txt",), ("config.json",)])
def test_train_refuses_a_folder_it_did_not_make(tmp_path, names):
    out = tmp_path / "mine"
    before = users_folder(out, names)
    result = train(out, "--epochs", "1")
    assert result.exit_code == 2, result.output
    assert str(out) in result.output and "another --out" in result.output
    assert "--resume" in result.output and "Traceback" not in result.output
    assert snapshot(out) == before  # nothing replaced, no lock file left


@pytest.mark.parametrize("state", [{}, {"config": {"lr": 0.1}}])
def test_train_resume_refuses_a_users_checkpoint(tmp_path, state):
    out = tmp_path / "mine"
    out.mkdir()
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 1, **state}, out / "checkpoint.pth")
    (out / "config.json").write_text('{"lr": 0.1}\n')
    before = snapshot(out)
    for force in ([], ["--force-resume"]):
        result = train(out, "--epochs", "2", "--resume", *force)
        assert result.exit_code == 2, result.output
        assert "not a vggfeat" in result.output and snapshot(out) == before


def test_train_own_folder_empty_folder_and_resume_still_work(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(empty, "--epochs", "1").exit_code == 0  # an existing empty folder is fine
    config = json.loads((empty / "config.json").read_text())
    assert config["vggfeat"] and config["epochs"] == 1
    again = train(empty, "--epochs", "1")  # a finished run: the old refusal, unchanged
    assert again.exit_code == 2 and "already holds a run" in again.output
    result = train(empty, "--epochs", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["epoch"] for x in (empty / "log.jsonl").read_text().splitlines()] \
        == [1, 2]


def test_train_restarts_its_own_killed_run_and_removes_only_its_stale_temporary_files(
        tmp_path):
    out = tmp_path / "run"
    assert train(out, "--epochs", "0").exit_code == 0
    (out / "checkpoint.pth").unlink()  # as killed before its first checkpoint
    (out / "backbone.pth").unlink()
    pid = dead_pid()
    stale = [out / f".config.json.{pid}.tmp", out / f".checkpoint.pth.{pid}.space.tmp"]
    kept = [out / f".notes.txt.{pid}.tmp",  # not a name the trainer writes
            out / f".log.jsonl.{1}.tmp"]  # pid 1 runs: a live writer's file
    for path in stale + kept:
        path.write_text("x")
    result = train(out, "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_train_localisation_refuses_a_folder_it_did_not_make(tmp_path):
    csv = make_loc_csv(tmp_path / "d", n_train=2, n_val=1)
    cls = classifier_file(tmp_path / "cls.pth", arch="vgg11")
    out = tmp_path / "mine"
    before = users_folder(out, ("config.json", "log.jsonl"))
    result = run_cli(["train-backbone", "--task", "localisation", "--root", csv,
                      "--finetune-from", cls, "--out", out, "--scale", CROP, "--workers", "0",
                      "--quiet", "--epochs", "1", "--batch-size", "2"])
    assert result.exit_code == 2, result.output
    assert str(out) in result.output and snapshot(out) == before


# -- svm-eval ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def voc_cache(tmp_path_factory):
    return small_voc_cache(tmp_path_factory.mktemp("voc"))


def svm_eval(cache, out, *extra):
    return run_cli(["svm-eval", cache, "--out", out, "--C", "1", "--cv", "2", "--quiet",
                    *extra])


@pytest.mark.parametrize("names", [("results.csv",), ("summary.json", "scores.csv"),
                                   ("splits.csv",)])
def test_svm_eval_refuses_to_replace_files_it_did_not_write(voc_cache, tmp_path, names):
    out = tmp_path / "mine"
    before = users_folder(out, names)
    result = svm_eval(voc_cache, out)
    assert result.exit_code == 2, result.output
    assert names[0] in result.output and "--overwrite" in result.output
    assert snapshot(out) == before
    assert svm_eval(voc_cache, out, "--overwrite").exit_code == 0  # asked for: replaced
    assert (out / "results.csv").read_text() != before.get("results.csv")


def test_svm_eval_own_folder_other_files_and_interrupted_run(voc_cache, tmp_path):
    out = tmp_path / "out"
    users_folder(out, ("notes.txt",))  # files it does not write are no obstacle
    assert svm_eval(voc_cache, out).exit_code == 0
    assert (out / "notes.txt").read_text() == "the user's own notes.txt\n"
    assert not (out / output_folder.WRITING_MARKER).exists()
    expected = snapshot(out)
    assert svm_eval(voc_cache, out).exit_code == 0  # its own folder: rerun as before
    (out / "pr_mine.png").write_bytes(b"not ours")  # an output name summary.json lacks
    result = svm_eval(voc_cache, out)
    assert result.exit_code == 2 and "pr_mine.png" in result.output
    (out / "pr_mine.png").unlink()
    # A run killed before its summary.json: the marker says its files are vggfeat's.
    (out / "summary.json").unlink()
    output_folder.claim_outputs(out)
    pid = dead_pid()
    stale, kept = out / f".results.csv.{pid}.tmp", out / f".notes.txt.{pid}.tmp"
    stale.write_text("x")
    kept.write_text("x")
    assert svm_eval(voc_cache, out).exit_code == 0
    assert not stale.exists() and kept.exists()
    kept.unlink()
    assert snapshot(out) == expected


# -- eval-localisation ---------------------------------------------------------------------

def test_eval_localisation_refuses_existing_outputs_unless_overwrite(tmp_path):
    csv = make_loc_csv(tmp_path / "d", n_train=1, n_val=2)
    loc = constant_box_net(tmp_path / "loc.pth", [0.5, 0.5, 0.5, 0.5])
    args = ["eval-localisation", "--root", csv, "--weights", loc, "--protocol", "center",
            "--scales", str(CROP), "--workers", "0", "--quiet", "--out", tmp_path / "res"]
    assert run_cli(args).exit_code == 0
    ours = json.loads((tmp_path / "res" / "localisation.json").read_text())
    for name in ("localisation.csv", "localisation.json"):
        (tmp_path / "res" / name).write_text("the user's own\n")
        result = run_cli(args)
        assert result.exit_code == 2, result.output
        assert name in result.output and "--overwrite" in result.output
        assert (tmp_path / "res" / name).read_text() == "the user's own\n"
        (tmp_path / "res" / name).unlink()
    assert run_cli([*args, "--overwrite"]).exit_code == 0
    assert json.loads((tmp_path / "res" / "localisation.json").read_text()) == ours
