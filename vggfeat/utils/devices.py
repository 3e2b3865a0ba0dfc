"""The one place where "auto" becomes a torch device."""
from __future__ import annotations

# Every accelerator "auto" may pick, in order of preference.
ALL_ACCELERATORS = ("cuda", "mps")
# Training and the SVM solver skip Apple's MPS: the trainer's fused SGD, DDP and the
# solver's float64 arithmetic are not available there, so "auto" means "cuda, else cpu".
CUDA_ONLY = ("cuda",)


def resolve_device(device=None, accelerators: tuple[str, ...] = ALL_ACCELERATORS):
    """A torch.device for `device`; "auto" (or None) picks the first available of
    `accelerators`, else the CPU. Anything else is passed to torch.device as it is.

    torch is imported on use, so that importing this module stays light.
    """
    import torch

    if device is not None and str(device) != "auto":
        return torch.device(device)
    for kind in accelerators:
        if kind == "cuda" and torch.cuda.is_available():
            return torch.device("cuda")
        backend = getattr(torch.backends, "mps", None)
        if kind == "mps" and backend is not None and backend.is_available():
            return torch.device("mps")
    return torch.device("cpu")
