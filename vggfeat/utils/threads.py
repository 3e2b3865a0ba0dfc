"""torch's intra-op thread count, set for a block of code and then restored."""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the block with `count` intra-op threads (``torch.set_num_threads``), then restore
    the count it had; torch is imported on use, so importing this module stays light."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
