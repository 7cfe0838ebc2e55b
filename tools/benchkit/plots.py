"""Plots of the result files (matplotlib, imported only when drawing)."""
from __future__ import annotations

from pathlib import Path


# Legend names and colours of the series the plots draw (keys: the rows' implementation prefixes).
SERIES = {"mategemm": ("mategemm", "tab:blue"),
          "mategemm_no_clean": ("mategemm, clean_logits=False", "tab:cyan"),
          "mategemm_packed": ("mategemm, token-packed", "tab:blue"),
          "mategemm_padded": ("mategemm, 128-row padding", "tab:cyan"),
          "mategemm_other_scales": ("mategemm, A's scales taken the other way", "tab:cyan"),
          "deepgemm": ("DeepGEMM", "tab:orange"),
          "cublas_blockwise": ("cuBLAS blockwise", "tab:green"),
          "cublas_tensorwise": ("cuBLAS per-tensor", "tab:red"),
          "cublas_loop": ("cuBLAS, one call per batch entry", "tab:green"),
          "torch_bmm_bf16": ("torch.bmm, bf16", "tab:purple"),
          "torch_bmm": ("torch.bmm", "tab:purple"),
          "torch_scaled_grouped_rowwise": ("torch._scaled_grouped_mm, row-wise FP8", "tab:purple"),
          "torch_paged_logits": ("torch implementation", "tab:purple"),
          "seed_padded": ("128-row padded pipeline (torch ops + per_token GEMMs)", "tab:orange"),
          "torch_bf16": ("torch layer, bf16 _grouped_mm", "tab:purple"),
          "mategemm_gran128": ("mategemm MXFP8, granularity 128", "tab:blue"),
          "mategemm_gran32": ("mategemm MXFP8, granularity 32", "tab:cyan"),
          "mategemm_fp8": ("mategemm FP8 (1,128,128), fp32 scales", "tab:olive"),
          "mategemm_nvfp4": ("mategemm NVFP4", "tab:blue"),
          "dequant_bf16": ("torch._grouped_mm, bf16, operands dequantised beforehand", "tab:purple"),
          "dequant_pipeline": ("dequantise to bf16 + torch._grouped_mm, per call", "tab:red"),
          "torch_grouped_bf16": ("torch._grouped_mm, bf16, operands dequantised beforehand", "tab:purple")}


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (and a note) where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", flush=True)
        return None
    return plt


def panel(rows: list, label, impls: tuple, metric: str = "tflops", ylabel: str = "TFLOPS", title: str = "",
          ceiling: tuple | None = None, log: bool = False) -> dict:
    """One axes: bars of each impl's `metric` per row, x labels `label(row)`; `ceiling`: (value, label) of
    a dashed line across it; `log`: log y axis."""
    return {"rows": rows, "label": label, "impls": impls, "metric": metric, "ylabel": ylabel, "title": title,
            "ceiling": ceiling, "log": log}


def draw(ax, p: dict) -> dict:
    """Draw panel `p` on `ax`; returns {legend name: handle}."""
    rows, impls = p["rows"], p["impls"]
    width = 0.8 / len(impls)
    handles = {}
    for i, impl in enumerate(impls):
        ys = [r.get(f"{impl}_{p['metric']}", 0) for r in rows]
        name, color = SERIES.get(impl, (impl, None))
        handles[name] = ax.bar([x + (i - (len(impls) - 1) / 2) * width for x in range(len(rows))], ys, width,
                               label=impl, color=color)
    if p["ceiling"]:
        value, name = p["ceiling"]
        handles[name] = ax.axhline(value, color="gray", linestyle="--", label=name)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([p["label"](r) for r in rows], rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel(p["ylabel"])
    if p["log"]:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if p["title"]:
        ax.set_title(p["title"], fontsize=10)
    return handles


def plot_panels(result: dict, path: Path, panels: list, cols: int = 1) -> None:
    """`panels` on a grid `cols` wide, under the suite, card and date; one legend per grid row, right of
    its last panel (outside the axes: it covers no bar); saved to `path`."""
    plt = pyplot()
    if plt is None or not panels:
        return
    title = f"{result.get('suite', '')} on {result.get('card', '?')} ({result.get('date', '?')})"
    lines = -(-len(panels) // cols)
    width = max(8.0, max(3.2, 0.4 * max(len(p["rows"]) for p in panels)) * cols + 2)
    if len(panels) == 1:
        fig, ax = plt.subplots(figsize=(width, 5))
        axes, panels = [ax], [{**panels[0], "title": panels[0]["title"] or title}]
    else:
        fig, grid = plt.subplots(lines, cols, figsize=(width, 4.5 * lines), squeeze=False)
        axes = [ax for line in grid for ax in line]
        fig.suptitle(title)
    for line in range(lines):
        handles = {}
        for i in range(line * cols, min(len(panels), (line + 1) * cols)):
            handles.update(draw(axes[i], panels[i]))
        axes[i].legend(list(handles.values()), list(handles), loc="upper left", bbox_to_anchor=(1.01, 1.0),
                       fontsize=8, frameon=False)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"plot: {path}", flush=True)


def plot(result: dict, path: Path, label=lambda r: f"{r['m']}x{r['n']}x{r['k']}",
         impls: tuple = ("mategemm", "deepgemm", "cublas_blockwise", "cublas_tensorwise"), metric: str = "tflops",
         ylabel: str = "TFLOPS", ceiling: tuple | None = None, log: bool = False) -> None:
    """One axes of bars of each implementation's `metric` per row (dense_fp8's TFLOPS by default);
    `ceiling`: (value, label) of a dashed line across the plot."""
    plot_panels(result, path, [panel(result["rows"], label, impls, metric, ylabel, ceiling=ceiling, log=log)])
