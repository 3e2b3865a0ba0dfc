"""Weights of torchvision's other CNN families (ResNet, ConvNeXt, ...): find, check, load.

`--weights` is a file (a plain state dict as torchvision releases it, or vggfeat's own
checkpoint written by `save_backbone`) or a name: an architecture ("resnet50", its DEFAULT
release) or a release file name ("resnet50-11ad3fa6.pth"), looked up in torch hub's
checkpoint folder. A file named like a release is hash-checked against its name, as
torch hub's ``check_hash`` does and as the VGG release files are. Preprocessing and crop
size come from torchvision's weights entry of that release and are recorded in ``meta``.

vggfeat never downloads unless asked: `download_release` (``--download``) fetches a release
with torch hub's own downloader into its folder, checks the hash and says where it went.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

import torch

from vggfeat.models.families import family_of, is_refused
from vggfeat.models.files import (
    HASH_IN_NAME,
    WeightsError,
    check_finite,
    check_release_hash,
    describe_mismatch,
    hub_checkpoint_dir,
    read_weights,
)
from vggfeat.models.preprocessing import validate
from vggfeat.models.torchvision_nets import TorchvisionNet, build_torchvision, check_arch
from vggfeat.utils.hashing import sha256_future

# torchvision's release files: "<arch>-<sha256 prefix>.pth" (resnet50-11ad3fa6.pth).
RELEASE_FILE = re.compile(r"^([a-z0-9_]+?)-[0-9a-f]{8,}\.pth$")
VGG_NAMES = {f"{a}{bn}" for a in ("vgg11", "vgg13", "vgg16", "vgg19") for bn in ("", "_bn")}
# torchvision's DenseNet releases predate its module names ("norm.1" for "norm1"); its own
# loader renames them the same way (torchvision.models.densenet._load_state_dict).
DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _name(text) -> str:
    return str(text).lower().replace("-", "_")


def wants_torchvision(weights, arch: str | None) -> bool:
    """Whether `weights`/`arch` name a non-VGG torchvision family (or a refused one)."""
    if arch:
        return family_of(arch) is not None or is_refused(arch)
    name = Path(str(weights)).name
    release = RELEASE_FILE.match(name)
    if release:
        return release.group(1) not in VGG_NAMES and family_of(release.group(1)) is not None
    if Path(str(weights)).expanduser().exists():
        return False
    return family_of(str(weights)) is not None or is_refused(str(weights))


@lru_cache(maxsize=1)
def release_files() -> dict:
    """Every supported torchvision release file name -> (arch, weights entry)."""
    from torchvision.models import get_model_weights, list_models

    files = {}
    for arch in list_models():
        if family_of(arch) is not None:
            for entry in get_model_weights(arch):
                files[entry.url.rsplit("/", 1)[-1]] = (arch, entry)
    return files


def _release(name: str):
    """(arch, entry) of a release named by file name or architecture (DEFAULT entry)."""
    from torchvision.models import get_model_weights

    if name in release_files():
        return release_files()[name]
    arch = _name(name)
    if arch in VGG_NAMES:  # the VGG releases vggfeat reads (their only ImageNet entry)
        return arch, get_model_weights(arch).IMAGENET1K_V1
    arch, _ = check_arch(arch)
    return arch, get_model_weights(arch).DEFAULT


def resolve(weights) -> tuple[Path, object]:
    """(file, torchvision entry or None) for a path or a release/architecture name."""
    path = Path(str(weights)).expanduser()
    if path.is_dir():
        path = path / "backbone.pth"
        if not path.is_file():
            raise WeightsError(f"{path.parent} is a folder without backbone.pth; give a "
                               "weights file.")
    if path.exists():
        return path, release_files().get(path.name, (None, None))[1]
    _, entry = _release(str(weights))
    hub_path = hub_checkpoint_dir() / entry.url.rsplit("/", 1)[-1]
    if not hub_path.exists():
        raise WeightsError(
            f"weights {str(weights)!r}: {hub_path} not found, and vggfeat downloads only when "
            f"asked: add --download, or fetch {entry.url} on a machine with network access and "
            f"put it at {hub_path} (or set TORCH_HOME), or pass a file with --weights.")
    return hub_path, entry


def download_release(weights, log=print, progress: bool = True) -> Path | None:
    """Fetch the torchvision release `weights` names into torch hub's folder (torch hub's
    downloader: a temporary file, renamed once complete and hash-checked); None for a file
    that exists. Raises WeightsError if the download fails or its hash is not the name's."""
    if Path(str(weights)).expanduser().exists():
        return None
    _, entry = _release(str(weights))
    filename = entry.url.rsplit("/", 1)[-1]
    target = hub_checkpoint_dir() / filename
    if target.exists():
        log(f"{filename} is already in {target.parent}")
        return target
    match = HASH_IN_NAME.search(filename)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(entry.url, os.fspath(target),
                                       hash_prefix=match.group(1) if match else None,
                                       progress=progress)
    except RuntimeError as error:  # torch hub's hash check (the partial file is removed)
        raise WeightsError(f"downloaded {entry.url} but it is not torchvision's release "
                           f"({error}); nothing was kept. Try again later.") from None
    except OSError as error:  # URLError is an OSError: no network, refused, not found
        raise WeightsError(f"could not download {entry.url} ({error}); check the network, "
                           f"or put the file at {target} yourself.") from None
    log(f"downloaded {entry.url} to {target}")
    return target


def load_torchvision(weights, arch: str | None = None) -> TorchvisionNet:
    """Load a torchvision CNN backbone (see the module's docstring) in eval mode."""
    if arch and is_refused(arch) or not arch and is_refused(str(weights)):
        check_arch(arch or str(weights))  # raises: transformers are refused by name
    path, entry = resolve(weights)
    hashing = sha256_future(path)
    if entry is not None:
        check_release_hash(path, hashing.result())
    state_dict, meta = read_weights(path, hashing)
    return model_from(path, state_dict, meta, hashing.result(), arch, entry)


def model_from(path: Path, state_dict: dict, meta: dict, digest: str, arch: str | None,
               entry) -> TorchvisionNet:
    """The backbone holding `state_dict`, its architecture agreed by --arch, the file's
    meta and the release's name (any two that disagree are refused)."""
    named = {"--arch": arch, "the file's meta": meta.get("arch"),
             "the release name": release_files().get(path.name, (None,))[0]}
    named = {k: _name(v) for k, v in named.items() if v}
    if len(set(named.values())) > 1:
        said = ", ".join(f"{k} says {v}" for k, v in named.items())
        raise WeightsError(f"{path}: the architecture is unclear ({said}); drop --arch or "
                           "give the matching file.")
    if not named:
        raise WeightsError(f"{path}: a bare state dict does not say its architecture; pass "
                           "--arch (e.g. resnet50).")
    name, family = check_arch(next(iter(named.values())))
    state_dict = _torchvision_keys(state_dict, family)
    model = _model_with(path, state_dict, name, meta, entry)
    check_finite(state_dict, path)
    model.meta.update(meta)
    if not meta and entry is not None and model.meta["num_classes"] == len(
            entry.meta.get("categories", ())):
        model.meta["classes"] = list(entry.meta["categories"])
    try:
        validate(model.meta.get("preprocessing") or {})
    except ValueError as error:
        raise WeightsError(f"{path}: its preprocessing record is unusable ({error}); save "
                           "the backbone again.") from None
    model.meta.update(source=str(path), sha256=digest)
    return model.eval()


def _torchvision_keys(state_dict: dict, family) -> dict:
    """Drop training-only aux branches; rename DenseNet's old release keys."""
    out = {}
    for key, value in state_dict.items():
        if key.split(".")[0] in family.aux:
            continue
        out[DENSENET_OLD_KEY.sub(r"\1\2", key) if family.name == "DenseNet" else key] = value
    return out


def _model_with(path: Path, state_dict: dict, arch: str, meta: dict, entry) -> TorchvisionNet:
    """Built on the meta device (no random weights computed to be overwritten), then the
    file's tensors adopted; shapes compared first so a wrong file is named, key by key."""
    num_classes = meta.get("num_classes") or _classes_of(state_dict)
    try:
        with torch.device("meta"):
            model = build_torchvision(arch, num_classes=num_classes, init=False, entry=entry)
    except NotImplementedError:  # RegNet works its widths out with tensors: build on the CPU
        model = build_torchvision(arch, num_classes=num_classes, init=False, entry=entry)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in state_dict.items()}
    # releases saved before BatchNorm counted its batches lack num_batches_tracked; torch's
    # BatchNorm fills it in when loading, as it does for torchvision
    missing_counts = {k for k in set(expected) - set(actual) if k.endswith("num_batches_tracked")}
    if {k: s for k, s in expected.items() if k not in missing_counts} != actual:
        raise WeightsError(f"{path} does not fit {arch}: "
                           + describe_mismatch(expected, actual))
    model.load_state_dict(state_dict, assign=True)
    for name, buffer in model.named_buffers():
        if buffer.is_meta:  # a count BatchNorm did not fill in: zero, as a fresh net's
            model.module_at(name.rsplit(".", 1)[0]).register_buffer(
                name.rsplit(".", 1)[1], torch.zeros((), dtype=buffer.dtype))
    return model


def _classes_of(state_dict: dict) -> int:
    """Outputs of the classifier: the first dimension of the last weight in the file."""
    weights = [key for key in state_dict if key.endswith("weight")]
    return int(state_dict[weights[-1]].shape[0]) if weights else 1000


def present_releases() -> list[str]:
    """Release files of the supported families already in torch hub's folder."""
    folder = hub_checkpoint_dir()
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name in release_files())
