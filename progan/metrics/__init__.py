"""Metrics of the paper and the field: multi-scale SWD, MS-SSIM and FID.

Standalone: ``python -m progan.metrics swd|msssim|fid --real DATA.lmdb --fake CHECKPOINT``.
During training: ``evaluate_metrics(names, GeneratorSource(G_ema, ...), dataset, resolution, ...)``,
sharded over processes (see progan.metrics.evaluate).

Modules: swd (sliced Wasserstein distance), msssim, fid (Frechet distance), inception (the FID
Inception-v3), sources (generator / dataset image sequences), cache (real statistics on disk),
evaluate (the sharded driver), __main__ (the command line). metrics.jsonl lines are appended
with progan.fileio.append_jsonl.
"""

from progan.metrics.common import MetricError
from progan.metrics.evaluate import (
    DEFAULT_NUM_IMAGES,
    METRICS,
    METRICS_WITH_REALS,
    evaluate_metrics,
    load_inception_once,
    parse_metric_names,
    unavailable_reason,
)
from progan.metrics.fid import feature_statistics, fid_from_features, frechet_distance
from progan.metrics.msssim import ms_ssim, ms_ssim_pairs
from progan.metrics.sources import DatasetSource, GeneratorSource
from progan.metrics.swd import sliced_wasserstein_distance

__all__ = [
    "DEFAULT_NUM_IMAGES", "METRICS", "METRICS_WITH_REALS", "DatasetSource", "GeneratorSource", "MetricError",
    "evaluate_metrics", "feature_statistics", "fid_from_features", "frechet_distance", "load_inception_once",
    "ms_ssim", "ms_ssim_pairs", "parse_metric_names", "sliced_wasserstein_distance",
    "unavailable_reason",
]
