"""The suites tools/bench.py runs, those with committed results, and their plots."""
from __future__ import annotations

from .bmm_suite import bench_bmm, plot_bmm
from .dense_suite import bench_dense_fp8, plot_dense
from .grouped_suite import bench_grouped, plot_grouped
from .host_suite import bench_host
from .indexer_suite import bench_indexer, plot_indexer
from .moe_layer_suite import bench_moe_layer, plot_moe_layer
from .mxfp8_suite import bench_mxfp8, plot_mxfp8
from .nvfp4_suite import bench_nvfp4, plot_nvfp4

RUNNERS = {"dense_fp8": bench_dense_fp8, "grouped": bench_grouped, "bmm": bench_bmm, "indexer": bench_indexer,
           "host": bench_host, "moe_layer": bench_moe_layer, "mxfp8": bench_mxfp8, "nvfp4": bench_nvfp4}
# Suites with committed results (docs/bench/<suite>.json), shown in the docs.
SUITES = ("dense_fp8", "grouped", "moe_layer", "mxfp8", "nvfp4", "bmm", "indexer", "host")
# Runnable suites with no result file yet: not in the docs or plots until a run writes one.
UNMEASURED_SUITES = ()
PLOTS = {"dense_fp8": plot_dense, "grouped": plot_grouped, "moe_layer": plot_moe_layer, "mxfp8": plot_mxfp8,
         "nvfp4": plot_nvfp4, "bmm": plot_bmm, "indexer": plot_indexer}
# The shipped shape suites (mategemm prewarm --shapes) whose kernels a suite or grouped mode calls:
# compiled in parallel before the timing starts, not one by one as the rows first call them.
PREWARM_SUITES = {"dense_fp8": ("dense_fp8",), "bmm": ("bmm",), "indexer": ("paged_mqa_logits",),
                  "moe_layer": ("moe_layers",), "nvfp4": ("nvfp4_moe",)}
PREWARM_GROUPED_MODES = {"contiguous": "grouped_contiguous_fp8", "masked": "grouped_masked_fp8",
                         "k_grouped": "grouped_k_fp8", "moe_layer": "moe_layers"}


def prewarm_names(suite: str, modes: list[str]) -> list[str]:
    """The shipped shape suites to pre-compile for `suite` (grouped: for its `modes`)."""
    if suite == "grouped":
        return sorted({PREWARM_GROUPED_MODES[mode] for mode in modes if mode in PREWARM_GROUPED_MODES})
    return list(PREWARM_SUITES.get(suite, ()))
