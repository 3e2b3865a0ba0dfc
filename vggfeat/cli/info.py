"""`vggfeat info`: versions, devices, the CPU's bf16 instructions, architectures, the
torchvision CNN families, and which weight files are already in torch hub's folder."""
import platform

import click


def collect_info() -> dict:
    """What `vggfeat info` prints, as data (also used by `vggfeat doctor`)."""
    import torch
    import torchvision

    from vggfeat.models import ARCHS, PAPER_NAMES
    from vggfeat.models.cpu_bf16 import bf16_support, expected_gain
    from vggfeat.models.families import FAMILIES
    from vggfeat.models.torchvision_load import present_releases
    from vggfeat.models.weights import hub_checkpoint_dir, torchvision_weights
    from vggfeat.version import __version__

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})"
                    for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    hub = hub_checkpoint_dir()
    found = []
    for arch in ARCHS:
        entry = torchvision_weights(arch)
        if entry is not None and (hub / entry.url.rsplit("/", 1)[-1]).exists():
            found.append(arch)
    letters = {v: k for k, v in PAPER_NAMES.items()}
    bf16 = bf16_support()
    return {
        "vggfeat": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "cuda": torch.version.cuda or "none",
        "devices": devices,
        "cpu bf16": f"{bf16.describe()}; {expected_gain(bf16)}",
        "architectures": [f"{a} ({letters[a]})" if a in letters else a for a in ARCHS],
        "families": [f"{f.name} ({'/'.join(p.rstrip('_') + '*' for p in f.prefixes)}, "
                     f"default layer {f.default_layer})" for f in FAMILIES],
        "weights_folder": str(hub), "weights_found": found or ["none"],
        "releases_found": present_releases() or ["none"],
    }


@click.command()
def info():
    """Show versions, devices, the CPU's bf16 instructions (what --precision bf16 gives),
    architectures, the torchvision CNN families that run densely (--arch), where weights
    are looked for and which release files are there.

    \b
    Example:
        vggfeat info
    """
    for key, value in collect_info().items():
        if isinstance(value, list):
            value = ", ".join(value)
        click.echo(f"{key:>15}: {value}")
