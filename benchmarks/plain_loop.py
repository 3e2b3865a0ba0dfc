"""The baseline of `extract_speed.py`: the obvious per-image loop, as its own process.

One image, one scale, one view at a time (batch of one), PIL decoding, torch's antialiased
bilinear resize: what a user would write with vggfeat's model and nothing else. Run as a
whole process by extract_speed.py so that its time includes its imports and weight loading,
like the `vggfeat extract` process it is compared with.

    python benchmarks/plain_loop.py WEIGHTS LIST_FILE Q1,Q2 OUT.npz
"""
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vggfeat.data.transforms import scaled_size
from vggfeat.models import load_backbone
from vggfeat.models.preprocessing import normalize


def main():
    weights, list_file, scales, out = sys.argv[1:5]
    model = load_backbone(weights).eval()
    preprocessing = model.meta["preprocessing"]
    scales = [int(q) for q in scales.split(",")]
    rows = {}
    with torch.no_grad():
        for path in open(list_file).read().split():
            x = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())
            x = x.permute(2, 0, 1).float().div(255)[None]
            per_scale = []
            for q in scales:
                y = F.interpolate(x, size=scaled_size(x.shape[2], x.shape[3], q),
                                  mode="bilinear", antialias=True)
                y = normalize(y, preprocessing)
                views = [model.dense(v, model.default_layer).mean((2, 3)) for v in (y, y.flip(-1))]
                per_scale.append(((views[0] + views[1]) / 2)[0].numpy())
            rows[path] = np.concatenate(per_scale)
    np.savez(out, paths=np.array(list(rows)), X=np.stack(list(rows.values())))


if __name__ == "__main__":
    main()
