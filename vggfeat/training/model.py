"""The network a run trains: a fresh VGG, one started from net A, or a trained net to
fine-tune; and its input normalisation (paper Sec. 3.1).

`load_run_model` also reads the nets other runs start from (a run folder or a backbone
file), e.g. the classification net a localisation run fine-tunes.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from vggfeat.models import build_backbone, load_backbone
from vggfeat.training.augment import sample_mean_rgb, training_preprocessing
from vggfeat.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from vggfeat.training.config import TrainingError


def load_run_model(source: str) -> nn.Module:
    """A trained net from a run folder (backbone.pth, else checkpoint.pth) or a weights file."""
    path = Path(source)
    if path.is_dir():
        path = path / "backbone.pth" if (path / "backbone.pth").exists() else path / CHECKPOINT_NAME
    if not path.exists():
        raise TrainingError(f"{source} holds no backbone.pth or {CHECKPOINT_NAME}; give a run "
                            "folder written by train-backbone or a backbone file.")
    if path.name == CHECKPOINT_NAME:
        state = load_checkpoint(path)
        c = state["config"]
        model = build_backbone(c["arch"], num_classes=c["num_classes"], width=c["width"],
                               crop_size=c["crop_size"],
                               pool_rounding=c.get("pool_rounding") or "floor")
        model.load_state_dict(state["model"])
        model.meta["classes"] = list(state["classes"])
        if c.get("input_preprocessing"):
            model.meta["preprocessing"] = dict(c["input_preprocessing"])
        return model.eval()
    return load_backbone(path)


def conv_positions(model: nn.Module) -> dict[tuple[int, int], str]:
    """(block, position in block) -> name in model.features of each convolution."""
    block, index, positions = 0, 0, {}
    for name, module in model.features.named_children():
        if isinstance(module, nn.MaxPool2d):
            block, index = block + 1, 0
        elif isinstance(module, nn.Conv2d):
            positions[(block, index)] = name
            index += 1
    return positions


def init_from_net_a(model: nn.Module, source: nn.Module, n_convs: int = 4) -> list[str]:
    """Copy net A's first `n_convs` conv layers and its three FC layers into `model`.

    A's first four convs are conv1_1, conv2_1, conv3_1, conv3_2 (paper Sec. 3.1); each goes
    to the layer at the same block and position of the deeper net, the only reading under
    which the shapes agree. A batch-norm layer right after a copied conv is copied too
    when both nets have one. Everything else keeps its random init.

    Returns:
        The state-dict keys that were copied.
    """
    src_positions, dst_positions = conv_positions(source), conv_positions(model)
    pairs = []
    for pos, src_name in list(src_positions.items())[:n_convs]:
        if pos not in dst_positions:
            raise TrainingError(f"the target net has no conv at block {pos[0] + 1}, "
                                f"position {pos[1] + 1} to take {src_name} from net A.")
        pairs.append((f"features.{src_name}", f"features.{dst_positions[pos]}"))
        src_next, dst_next = str(int(src_name) + 1), str(int(dst_positions[pos]) + 1)
        if isinstance(getattr(source.features, src_next, None), nn.BatchNorm2d) and \
                isinstance(getattr(model.features, dst_next, None), nn.BatchNorm2d):
            pairs.append((f"features.{src_next}", f"features.{dst_next}"))
    pairs += [(f"classifier.{i}", f"classifier.{i}") for i in (0, 3, 6)]
    src_state, dst_state = source.state_dict(), model.state_dict()
    copied = []
    for src_prefix, dst_prefix in pairs:
        for key in [k for k in src_state if k.startswith(src_prefix + ".")]:
            dst_key = dst_prefix + key[len(src_prefix):]
            if dst_state[dst_key].shape != src_state[key].shape:
                raise TrainingError(
                    f"--init-from: {key} {tuple(src_state[key].shape)} does not fit {dst_key} "
                    f"{tuple(dst_state[dst_key].shape)}; net A must have the same width, crop "
                    "size and number of classes.")
            dst_state[dst_key].copy_(src_state[key])
            copied.append(dst_key)
    return copied


def resolve_preprocessing(cfg: dict, train_set, state, source=None) -> dict:
    """The run's input normalisation, also written to cfg["input_preprocessing"].

    On --resume the checkpoint's (the same numbers as before). A net started from another
    (`source`, --init-from/--finetune-from) keeps the input its weights were trained on
    unless --preprocessing, --mean or --std say otherwise. Else from the options: paper
    (the mean RGB sampled from `train_set`) by default.
    """
    if state is not None and state["config"].get("input_preprocessing"):
        record = dict(state["config"]["input_preprocessing"])
    elif source is not None and cfg["preprocessing"] is None and cfg["mean"] is None \
            and cfg["std"] is None:
        record = dict(source.meta["preprocessing"])
    else:
        kind = cfg["preprocessing"] = cfg["preprocessing"] or "paper"
        mean = cfg["mean"] = cfg["mean"] or ("sample" if kind == "paper" else "imagenet")
        sampled = None
        if mean == "sample":
            sampled = sample_mean_rgb(train_set, cfg["mean_sample"], cfg["seed"],
                                      cfg["workers"])
        try:
            record = training_preprocessing(kind, mean, cfg["std"], sampled)
        except ValueError as error:
            raise TrainingError(f"--mean/--std: {error}") from None
    cfg["input_preprocessing"] = record
    return record


def build_model(cfg: dict, train_set=None, state=None) -> nn.Module:
    """The network to train: fresh init, or from net A, or a trained net to fine-tune.

    Fills cfg["input_preprocessing"] (`resolve_preprocessing`, from `train_set` and the
    resumed `state`) and cfg["pool_rounding"] when it is None (the source net's rounding,
    else torch's floor).
    """
    model = build_backbone(cfg["arch"], num_classes=cfg["num_classes"], width=cfg["width"],
                           crop_size=cfg["crop_size"], init=cfg["init"], dropout=cfg["dropout"])
    source_path = cfg["init_from"] or cfg["finetune_from"]
    source = load_run_model(source_path) if source_path else None  # after the random init
    if cfg["pool_rounding"] is None:
        cfg["pool_rounding"] = source.pool_rounding if source is not None else "floor"
    model.set_pool_rounding(cfg["pool_rounding"])
    resolve_preprocessing(cfg, train_set, state, source)
    if source is not None:
        if source.meta.get("classes") and list(source.meta["classes"]) != cfg["classes"]:
            raise TrainingError(f"{source_path} was trained on other classes than {cfg['data']}; "
                                "use a net trained on the same class folders.")
        if cfg["init_from"]:
            init_from_net_a(model, source)
        else:
            try:
                model.load_state_dict(source.state_dict())
            except RuntimeError as error:
                raise TrainingError(f"--finetune-from {source_path} has another configuration "
                                    f"than --arch {cfg['arch']} --width {cfg['width']} "
                                    f"--crop-size {cfg['crop_size']}: {error}") from None
    model.meta.update(
        classes=list(cfg["classes"]),
        preprocessing=dict(cfg["input_preprocessing"]),
        training={"scale": cfg["scale_jitter"] or cfg["scale"], "epochs": cfg["epochs"],
                  "init": cfg["init"], "seed": cfg["seed"],
                  "preprocessing": cfg["preprocessing"] or ("from " + source_path if source
                                                            else "paper"),
                  "mean": cfg["mean"] if isinstance(cfg["mean"], str | None) else "given"},
    )
    return model
