"""Metrics of the paper and the field: multi-scale SWD, MS-SSIM and FID.

Standalone: ``python -m progan.metrics swd|msssim|fid --real DATA.lmdb --fake CHECKPOINT``.
During training: ``evaluate_metrics(names, GeneratorSource(G_ema, ...), dataset, resolution, ...)``,
sharded over processes (see progan.metrics.evaluate).

Modules: swd (sliced Wasserstein distance), msssim, fid (Frechet distance), inception (the FID
Inception-v3), sources (generator / dataset image sequences), cache (real statistics on disk),
evaluate (the sharded driver), cli (the command line; __main__ runs it). metrics.jsonl lines are appended
with progan.runtime.fileio.append_jsonl.

May import: progan.data, progan.generator, progan.nets, progan.runtime, progan.shapes.
"""

import importlib

# Where each public name lives. Imported on first use (PEP 562), so that `python -m
# progan.metrics` starts without torch and can answer a Ctrl-C during torch's import in one line.
_HOMES = {
    "MetricError": "common",
    **dict.fromkeys(("DEFAULT_NUM_IMAGES", "METRICS", "METRICS_WITH_REALS", "evaluate_metrics", "load_inception_once",
                     "parse_metric_names", "unavailable_reason"), "evaluate"),
    **dict.fromkeys(("feature_statistics", "fid_from_features", "frechet_distance"), "fid"),
    **dict.fromkeys(("ms_ssim", "ms_ssim_pairs"), "msssim"),
    **dict.fromkeys(("DatasetSource", "GeneratorSource"), "sources"),
    "sliced_wasserstein_distance": "swd",
}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


__all__ = [
    "DEFAULT_NUM_IMAGES", "METRICS", "METRICS_WITH_REALS", "DatasetSource", "GeneratorSource", "MetricError",
    "evaluate_metrics", "feature_statistics", "fid_from_features", "frechet_distance", "load_inception_once",
    "ms_ssim", "ms_ssim_pairs", "parse_metric_names", "sliced_wasserstein_distance",
    "unavailable_reason",
]
