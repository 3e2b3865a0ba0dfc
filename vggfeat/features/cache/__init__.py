"""The HDF5 feature cache: one file per dataset and backbone configuration.

This package is the only code that knows the file format; everything else reads and writes
caches through the names below.

Layout (the contract `vggfeat.evaluation` reads):

- ``ids`` (N, utf-8), ``descriptors`` (N, S, D) float32 or float16 (per scale, flip-averaged,
  not normalised), ``done`` (N, bool), ``failed`` (compound: ``id``, ``reason``).
  voc2012-action adds a group ``boxes`` with the same four datasets.
- Attributes: vggfeat_format, vggfeat_version, dataset, root, arch, layer, weights_sha256,
  scales, flip, preprocessing (JSON), reader_options (JSON), precision, dtype, config (JSON
  of everything that determines the numbers) and config_key (its hash); once complete,
  descriptor_variation (`stats`).
- Several layers (``--layer conv5_3,fc7``): the first layer's rows stay in
  ``descriptors``; each further layer's are ``layers/<name>`` (N, S, D_layer) in the same
  row group, and the attribute ``layers`` (JSON) lists them all in order (absent from a
  one-layer cache, which is written exactly as before). ``done`` covers every layer of a
  row. Attribute ``pool`` is written when positions are max-pooled (absent: average).
- Caches written by the Python API with labels: ``labels`` (N, K) int8, optional
  ``splits``, and the class names in attribute ``classes``.

- ``checksums`` (N, L) uint32 in each row group: the CRC-32 of each row's bytes per layer
  (`integrity`), checked on every read; absent from caches of older versions.

Crash safety: the file is written as ``OUT.partial`` and renamed to ``OUT`` only when every
row has been attempted (`resume`, `writer`); a row's ``done`` flag is set only after its
descriptor and checksums are written; ``failed`` is written when a run ends, so a killed
run's failures are simply retried. What a finished file holds besides its rows (failures,
labels, the variation statistic) is written into ``OUT.partial`` in place under an undo
journal (`inplace`), so finishing never copies the file.

Several processes: rank 0 writes ``OUT.partial``; every other rank writes its rows to a
shard ``OUT.partial.rank<r>.<group>`` laid out the same way, which rank 0 merges (at the end,
or at the start of the next run if the processes were killed).

Modules: `layout` (names, paths, attributes, errors), `resume` (create or resume a file),
`writer` (rows, failures, shards, labels), `inplace` (in-place changes undone after a
kill), `integrity` (row checksums), `header` (what a file holds, without its rows),
`reader` (descriptors), `rows` (reading, aggregating and normalising in row blocks:
bounded memory), `stats` (the descriptor-variation statistic), `messages`
(unfinished or unlabelled caches).
"""
from vggfeat.features.cache.header import Overview, read_failed, read_labels, read_overview
from vggfeat.features.cache.integrity import (
    NO_CHECKSUMS,
    DamagedCacheError,
    Verification,
    verify,
)
from vggfeat.features.cache.layout import (
    BOXES_GROUP,
    DTYPES,
    FORMAT,
    ROOT_GROUP,
    CacheError,
    CacheInUseError,
    ConfigMismatchError,
    NotACacheError,
    cache_attributes,
    describe_difference,
    final_path,
    is_partial,
    is_vggfeat_cache,
    layer_rows,
    lock_path,
    partial_path,
    shard_path,
    shard_paths,
    stored_layers,
)
from vggfeat.features.cache.messages import evaluation_problem, unfinished_message
from vggfeat.features.cache.reader import (
    CachedRows,
    FeatureDataset,
    load_features,
    read_descriptors,
    read_done_rows,
)
from vggfeat.features.cache.resume import open_for_writing, pending
from vggfeat.features.cache.rows import (
    TOO_BIG_FIXES,
    aggregate_rows,
    aggregate_scales,
    aggregated_rows,
    l2_normalize,
)
from vggfeat.features.cache.stats import (
    LOW_VARIATION,
    VARIATION_ATTR,
    descriptor_variation,
    low_variation_warning,
    read_variation,
    store_variation,
    variation_and_source,
)
from vggfeat.features.cache.writer import (
    RowWriter,
    create_shard,
    finalize,
    is_complete,
    merge_shards,
    record_failures,
    rewriting,
    write_labels,
)

__all__ = [
    "BOXES_GROUP", "DTYPES", "FORMAT", "LOW_VARIATION", "ROOT_GROUP", "VARIATION_ATTR",
    "TOO_BIG_FIXES",
    "NO_CHECKSUMS", "CacheError", "CachedRows", "CacheInUseError", "ConfigMismatchError",
    "DamagedCacheError", "FeatureDataset", "Verification", "is_complete", "verify",
    "NotACacheError", "Overview", "RowWriter", "aggregate_rows", "aggregate_scales",
    "aggregated_rows",    "cache_attributes",
    "create_shard", "describe_difference", "descriptor_variation", "evaluation_problem",
    "final_path", "finalize", "is_partial", "is_vggfeat_cache", "l2_normalize", "layer_rows",
    "load_features", "lock_path", "low_variation_warning", "merge_shards",
    "open_for_writing", "partial_path", "pending", "read_descriptors", "read_done_rows",
    "read_failed", "read_labels", "read_overview", "read_variation", "record_failures",
    "rewriting", "shard_path", "shard_paths", "store_variation", "stored_layers",
    "unfinished_message", "variation_and_source", "write_labels",
]
