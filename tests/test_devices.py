"""The one "auto" device resolver (vggfeat.utils.devices)."""
import torch

from vggfeat.utils.devices import CUDA_ONLY, resolve_device


def test_device_auto_on_this_machine():
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(torch.device("cpu")).type == "cpu"


def test_auto_prefers_cuda_then_mps_unless_told_otherwise(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").type == "mps"
    assert resolve_device("auto", CUDA_ONLY).type == "cpu"  # training and the SVM solver
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("auto", CUDA_ONLY).type == "cuda"
    assert resolve_device("cuda:1").index == 1  # an explicit device is taken as given
