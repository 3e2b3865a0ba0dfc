"""benchmarks/gpu_check.py runs on the CPU at test size, so the GPU script cannot rot.

The GPU figures themselves need a GPU; here every part (extraction through the device-decode
path and prefetcher, a training step, the SVM comparisons) runs with ``--device cpu
--tiny`` and must pass its own CUDA-vs-CPU checks, and the table must be appended.
"""
import importlib.util
import sys
from pathlib import Path

import pytest

from vggfeat.utils.threads import torch_threads

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(SCRIPT.parent))  # the script puts benchmarks/ on the path


@pytest.mark.slow  # three parts (extraction, training, SVMs incl. LinearSVC) in one run
def test_tiny_cpu_run_passes_its_checks_and_appends_the_table(gpu_check, tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    with torch_threads(1):
        status = gpu_check.main(["--device", "cpu", "--tiny", "--results", str(results)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    appended = results.read_text()
    assert appended.startswith("# Benchmark results\n")  # appended, nothing overwritten
    assert "### gpu_check on" in appended and "--device cpu --tiny" in appended
    for figure in ("extract vgg11", "train vgg11", "vs torch CPU", "vs LinearSVC"):
        assert figure in printed and figure in appended
    assert "FAIL" not in printed


def test_cuda_without_a_gpu_is_a_clear_error(gpu_check, monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device cpu --tiny"):
        gpu_check.main(["--device", "cuda", "--no-append"])
