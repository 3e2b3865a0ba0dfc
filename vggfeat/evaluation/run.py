"""svm-eval as one library call: feature caches in, a result folder out (paper Appendix B).

`run_svm_eval` is the whole of `vggfeat svm-eval`: check the caches, refuse an output
folder that holds another run (`output_folder`), load and check the descriptors, run the
dataset's protocol, write the report. `evaluate_features` is its second half, for
descriptors already in memory (the demo's raw pixels), under the same folder policy.

Messages go through `echo(text, err=False)` (click.echo's signature) when they arise:
warnings and notes with ``err=True``, the result table without; the default says nothing.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vggfeat.evaluation import inputs, output_folder, report
from vggfeat.evaluation.diagnostics import chance_warning, grid_edge_warning
from vggfeat.evaluation.inputs import EvaluationInputError, Features
from vggfeat.evaluation.protocols import Result, Settings, run_protocol
from vggfeat.utils import interrupts

Echo = Callable[..., None]


@dataclass
class SvmEvalRun:
    """What one svm-eval run produced.

    ``files``: every file written (the report's and the protocol's), sorted.
    ``left_out``: the images left out for want of a descriptor, or None.
    """

    result: Result
    out: Path
    paper: dict | None
    table: str
    files: list[str] = field(default_factory=list)
    left_out: inputs.LeftOut | None = None


def default_out(first_cache) -> Path:
    """Where results go without --out: ``<first cache's name>-svm``."""
    return Path(f"{Path(first_cache).stem}-svm")


def run_svm_eval(caches: Sequence, settings: Settings | None = None, *, out=None,
                 aggregate: str | None = None, block_l2: bool = False, root=None,
                 overwrite: bool = False, strict: bool = False, layer: str | None = None,
                 echo: Echo | None = None) -> SvmEvalRun:
    """Evaluate feature caches (stacked when several) with their dataset's protocol.

    Args:
        caches: HDF5 caches written by `vggfeat extract` (or by the Python API with labels).
        settings: how to fit and split (``probe``: svm, logreg or knn); ``device="auto"``
            picks the GPU when there is one.
        out: output folder [default: `default_out` of the first cache].
        aggregate: "avg" or "stack" for the scales [default: the dataset's].
        block_l2: L2-normalise each cache's block before stacking.
        root: the dataset's location, if it moved since the extraction.
        overwrite: replace results of another run (or files vggfeat did not write) in `out`.
        strict: refuse caches with images that have no descriptor, instead of leaving them out.
        layer: the layer to read from caches holding several [default: each cache's first].
        echo: where messages go (see the module docstring).

    Raises:
        EvaluationInputError: input that cannot be evaluated (the caches, the dataset, the
            options, or an `out` holding another run's results: `OutputFolderError`).
        ForeignFileError: `out` holds output-named files that vggfeat did not write.
    """
    settings = _resolved(settings or Settings())
    out = Path(out) if out is not None else default_out(caches[0])
    return run_plan(caches, {out: settings}, aggregate=aggregate, block_l2=block_l2,
                    root=root, overwrite=overwrite, strict=strict, layer=layer, echo=echo)[0]


def run_plan(caches: Sequence, plan: dict, *, aggregate=None, block_l2=False, root=None,
             overwrite=False, strict=False, layer=None, echo: Echo | None = None,
             check: Callable | None = None) -> list[SvmEvalRun]:
    """Several evaluations of the same caches, loaded once: `plan` maps each output
    folder to its (resolved) settings. Every folder is checked (and `check(reader)`
    called) before anything is loaded or fitted; the runs go in the plan's order."""
    echo = echo or _silent
    caches = [Path(p) for p in caches]
    _refuse_unusable(caches)
    infos = [inputs.read_cache_info(p, layer) for p in caches]
    inputs.check_same_dataset(infos)
    reader = _open_reader(infos[0], root)
    if check is not None:
        check(reader)
    aggregate = aggregate or reader.default_aggregate
    extra = {"aggregate": aggregate, "block_l2": block_l2, "root": str(reader.root)}
    sources = [{"path": str(i.path), "arch": i.arch, "layer": i.layer,
                "scales": list(i.scales)} for i in infos]
    recorded = {out: {**recorded_settings(s), **extra} for out, s in plan.items()}
    for out in plan:  # before any loading
        output_folder.prepare(out, recorded[out], sources, overwrite=overwrite)
    _warn_low_variation(caches, echo)
    # Rows read when a split needs them: a split's training rows are held, not every
    # descriptor, and test rows are scored a block at a time; none is held by the report
    # (a 257-class confusion matrix's image takes 127 MiB).
    _, features = inputs.load(caches, aggregate, block_l2=block_l2, layer=layer)
    try:
        features.check_finite()  # bad rows refused before a protocol writes its splits
        reader, left_out = inputs.leave_out_missing(reader, features, strict=strict)
        if left_out:
            echo(left_out.message(), err=True)
        runs = []
        for out, settings in plan.items():
            result = _run_protocol(out, reader, features, settings)
            runs.append(_report(out, result, settings, recorded[out], sources, echo,
                                left_out))
    finally:
        features.close()
    return runs


def recorded_settings(settings: Settings) -> dict:
    """The settings summary.json records (and a rerun compares): the SVM's exactly as
    before the other probes existed; each other probe without the options it ignores."""
    recorded = dataclasses.asdict(settings)
    if recorded["test_from"] is None:
        del recorded["test_from"]
    ignored = {"svm": ("probe", "k"), "logreg": ("k", "solver"), "knn": ("C", "solver")}
    for key in ignored[settings.probe]:
        del recorded[key]
    return recorded


def evaluate_features(reader, features: Features, settings: Settings | None, out, *,
                      sources: list[dict], extra_settings: dict | None = None,
                      overwrite: bool = False, echo: Echo | None = None) -> SvmEvalRun:
    """The second half of `run_svm_eval`, for descriptors already in memory.

    Args:
        reader: the dataset's reader (its labels and splits).
        features: a descriptor row for every id the protocol uses.
        sources: summary.json's ``inputs``: one dict per descriptor source (``arch`` and
            ``layer`` pick the paper's figure).
        extra_settings: recorded in summary.json beside `settings` (and compared by a rerun).
    """
    settings = _resolved(settings or Settings())
    recorded = {**recorded_settings(settings), **(extra_settings or {})}
    out = Path(out)
    output_folder.prepare(out, recorded, sources, overwrite=overwrite)
    result = _run_protocol(out, reader, features, settings)
    return _report(out, result, settings, recorded, sources, echo or _silent)


def _run_protocol(out: Path, reader, features: Features, settings: Settings):
    """Run the protocol into `out`, claimed for it (released by `_report`)."""
    made_folder = not out.exists()
    output_folder.claim_outputs(out)  # files written from here on are known as ours
    try:
        with interrupts.progress_note(lambda: _stopped_note(out)):
            return run_protocol(reader, features, settings, out)
    except BaseException:
        output_folder.unclaim_if_unused(out, made_folder)  # a refused run leaves no trace
        raise


def _report(out: Path, result, settings: Settings, recorded: dict, sources: list[dict],
            echo: Echo, left_out=None) -> SvmEvalRun:
    """Say what is doubtful in `result`, print its table and write the report into `out`."""
    edge = grid_edge_warning(result.chosen_C, settings.C) if result.hyperparameter == "C" else None
    for warning in (edge, chance_warning(result.headline, result.rows, len(result.classes))):
        if warning:
            echo(warning, err=True)
    paper = report.paper_figure(result, [s["arch"] for s in sources],
                                [s["layer"] for s in sources])
    table = report.format_table(result, paper)
    echo(table)  # before the files: the figures are seen even if writing fails
    with interrupts.progress_note(lambda: _stopped_note(out)):
        files = report.write_report(result, out, recorded, sources, paper,
                                    left_out=left_out.record() if left_out else None, echo=echo)
    output_folder.release_outputs(out)
    written = sorted(str(p) for p in list(files.values()) + result.files)
    return SvmEvalRun(result, out, paper, table, written, left_out)


def _stopped_note(out: Path) -> str:
    """What a stopped svm-eval keeps (`vggfeat.utils.interrupts`): every file is written
    whole (`vggfeat.utils.atomic`), and a rerun into the same folder starts over."""
    return (f"the evaluation into {out} did not finish (the files it wrote are whole); "
            "rerun the same command to evaluate again")


def _silent(*_args, **_kwargs) -> None:
    """The default `echo`: say nothing."""


def _resolved(settings: Settings) -> Settings:
    """``device="auto"``: the GPU when there is one, else the CPU."""
    if settings.device != "auto":
        return settings
    from vggfeat.utils.devices import CUDA_ONLY, resolve_device

    # The solver works in float64, which Apple's MPS lacks: CUDA or the CPU.
    return dataclasses.replace(settings, device=str(resolve_device("auto", CUDA_ONLY)))


def _refuse_unusable(caches: list[Path]) -> None:
    """Refuse an unfinished cache, or one written by the API without labels, by name."""
    from vggfeat.features.cache import evaluation_problem

    for path in caches:
        problem = evaluation_problem(path)
        if problem:
            raise EvaluationInputError(problem)


def _open_reader(info: inputs.CacheInfo, root):
    """The cache's stored labels (written by the Python API), else its dataset's reader."""
    from vggfeat.data.readers import LabelTableReader
    from vggfeat.features.cache import read_labels

    stored = read_labels(info.path)
    if stored is None:
        return inputs.open_reader(info, root)
    ids, classes, y, splits = stored
    return LabelTableReader(info.dataset, root or info.root, ids, classes, y, splits)


def _warn_low_variation(caches: list[Path], echo: Echo) -> None:
    from vggfeat.features.cache import low_variation_warning, read_variation

    for path in caches:
        warning = low_variation_warning(path, read_variation(path))
        if warning:
            echo(warning, err=True)
