"""Start-up stays light: `vggfeat --version`/`--help` and every CLI module import no torch.

Behavioural, not timed: what a fresh interpreter has imported, read from ``sys.modules``
and from ``python -X importtime`` (each check runs in its own process).
"""
import subprocess
import sys

import pytest

HEAVY = ("torch", "sklearn", "matplotlib", "h5py", "torchvision", "scipy")


def _imported_after(code: str) -> set[str]:
    """Top-level packages a fresh interpreter has imported after running `code`."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    return set(done.stdout.split())


def _importtime_modules(*args: str) -> set[str]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "vggfeat", *args],
                          capture_output=True, text=True, check=True)
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert "vggfeat" in names  # the probe does see imports
    return names


@pytest.mark.parametrize("args", [("--version",), ("--help",)])
def test_version_and_help_import_no_heavy_package(args):
    assert not set(HEAVY) & _importtime_modules(*args)


def test_cli_modules_import_no_heavy_package():
    from vggfeat.cli import COMMANDS

    modules = sorted({target.split(":")[0] for target in COMMANDS.values()})
    code = "import vggfeat, vggfeat.cli\n" + "\n".join(f"import {m}" for m in modules)
    assert not set(HEAVY) & _imported_after(code)


def test_public_names_load_on_first_use():
    names = _imported_after("import vggfeat")
    assert "torch" not in names
    loaded = _imported_after("from vggfeat import FeatureExtractor, build_backbone\n"
                             "assert callable(FeatureExtractor) and callable(build_backbone)")
    assert "torch" in loaded


def test_unknown_attribute_is_an_attribute_error():
    import vggfeat

    with pytest.raises(AttributeError, match="no_such_name"):
        vggfeat.no_such_name  # noqa: B018
    assert "FeatureExtractor" in dir(vggfeat)
    assert set(vggfeat.__all__) <= set(dir(vggfeat))


def test_the_extraction_path_imports_no_scikit_learn():
    """`vggfeat extract` runs vggfeat.features.pipeline: torch and h5py, not sklearn/scipy."""
    names = _imported_after("import vggfeat.features.pipeline, vggfeat.features.engine")
    assert "torch" in names and not {"sklearn", "scipy", "pandas", "matplotlib"} & names
    star = _imported_after("from vggfeat.features import *\nassert FeatureExtractor, Engine")
    assert "sklearn" in star


def test_extract_with_own_weights_imports_no_torchvision_or_dynamo(tmp_path):
    """`vggfeat extract` with vggfeat's own weights file: torchvision (its release table is
    for files named like releases) and torch._dynamo (~1.5 s; pulled in by initialising
    meta tensors) stay out of the process, and scikit-learn too."""
    import numpy as np
    from PIL import Image

    from vggfeat.models import build_backbone, save_backbone

    weights = tmp_path / "tiny.pth"
    save_backbone(build_backbone("vgg11", width=0.125, crop_size=32, num_classes=4), weights)
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            pixels = np.random.default_rng(len(label) + len(split)).integers(0, 256, (40, 48, 3))
            Image.fromarray(pixels.astype(np.uint8)).save(folder / "x.jpg")
    # Read at exit by an atexit handler: the entry point ends the process itself.
    code = ("import atexit, sys\nfrom vggfeat.cli import main\n"
            f"sys.argv = ['vggfeat', 'extract', '--dataset', 'folder', '--root', "
            f"{str(tmp_path / 'images')!r}, '--weights', {str(weights)!r}, '--scales', '32', "
            f"'--device', 'cpu', '--quiet', '--out', {str(tmp_path / 'out.h5')!r}]\n"
            "atexit.register(lambda: print('MODULES:' + ' '.join(m for m in sys.modules if "
            "m.startswith(('torchvision', 'torch._dynamo', 'sklearn'))), file=sys.stderr))\n"
            "main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.h5").is_file()
    loaded = done.stderr.rsplit("MODULES:", 1)[1].split()
    assert loaded == [], loaded
