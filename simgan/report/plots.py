"""The plots of a validation report, in the field's style (mplhep), shared by the domains.

Every histogram is a density with its Poisson error bars; every profile point carries its
standard error; the simulator-vs-simulator floor (an independent simulated sample against the
held-out reference) is drawn as a grey band, in the histogram and in the ratio panel attached
below it; every axis says its quantity and unit.

    with figure(rows, cols, ratio=True) as (fig, panels):
        compare_hist(panels[0], ref, cand, floor, bins, "E_tot / E_inc", "1", labels)
    save(fig, path)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REFERENCE_COLOR, CANDIDATE_COLOR, FLOOR_COLOR = "black", "tab:red", "0.6"
MAX_BINS = 25  # bins of a plotted histogram at most (the metrics keep their own binning)


@dataclass(frozen=True)
class Labels:
    """Who is who in a domain's plots."""

    reference: str = "simulation (held out)"
    candidate: str = "surrogate"
    floor: str = "simulator floor"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def figure(rows: int, cols: int, ratio: bool = False, panel_size=(4.2, 3.6)):
    """A figure in mplhep's ROOT style of rows x cols panels; with `ratio`, each panel is a pair
    (main axes, ratio axes below it sharing x). Yields (fig, panels) with panels in row-major
    order; the figure is closed on leaving (save it inside)."""
    plt = _pyplot()
    import mplhep

    with plt.style.context(mplhep.style.ROOT):
        w, h = panel_size
        fig = plt.figure(figsize=(w * cols, h * rows * (1.3 if ratio else 1.0)), layout="constrained")
        try:
            if ratio:  # each cell: the main axes over its ratio axes, no gap between them
                outer = fig.add_gridspec(rows, cols)
                panels = []
                for r in range(rows):
                    for c in range(cols):
                        inner = outer[r, c].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.0)
                        ax = fig.add_subplot(inner[0])
                        rax = fig.add_subplot(inner[1], sharex=ax)
                        ax.tick_params(labelbottom=False)
                        panels.append((ax, rax))
            else:
                panels = [fig.add_subplot(rows, cols, k + 1) for k in range(rows * cols)]
            yield fig, panels
        finally:
            plt.close(fig)


def save(fig, path: Path, dpi: int = 80) -> Path:
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def readable_log(axis) -> None:
    """Log ticks at 1, 2 and 5 per decade, written as plain numbers (5, 10, 20, not 10^1 alone)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def axis_label(quantity: str, unit: str) -> str:
    """'quantity [unit]'; a dimensionless quantity (unit '1') carries no bracket."""
    return quantity if unit in ("", "1") else f"{quantity} [{unit}]"


def density(values: np.ndarray, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The density of `values` over `bins` (values outside go into the first and last bin) and
    its Poisson error per bin."""
    v = np.clip(np.asarray(values, np.float64), bins[0], bins[-1])
    counts, _ = np.histogram(v[np.isfinite(v)], bins)
    norm = max(counts.sum(), 1) * np.diff(bins)
    return counts / norm, np.sqrt(counts) / norm


def _ratio(a, ea, b, eb):
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(b > 0, a / b, np.nan)
        e = np.where((a > 0) & (b > 0), r * np.sqrt((ea / np.where(a > 0, a, 1)) ** 2 + (eb / np.where(b > 0, b, 1)) ** 2),
                     np.nan)
    return r, e


def compare_hist(panel, reference, candidate, floor, bins, quantity: str, unit: str, labels: Labels = Labels(),
                 title: str | None = None, logx: bool = False, logy: bool = False, legend: bool = False) -> None:
    """The reference as points with error bars, the candidate as a line with its error bars,
    the floor sample as a band (its density +- its error); below, candidate / reference with
    errors and the floor's ratio as a band around 1."""
    import mplhep

    ax, rax = panel
    bins = np.asarray(bins, np.float64)
    if len(bins) > MAX_BINS + 1:  # a readable histogram: every k-th edge of the given ones
        bins = np.append(bins[:-1:-(-(len(bins) - 1) // MAX_BINS)], bins[-1])
    hr, er = density(reference, bins)
    hc, ec = density(candidate, bins)
    if floor is not None:
        hf, ef = density(floor, bins)
        ax.stairs(hf + ef, bins, baseline=np.maximum(hf - ef, 0), fill=True, color=FLOOR_COLOR, alpha=0.5,
                  label=labels.floor)
        rf, erf = _ratio(hf, ef, hr, er)
        rax.stairs(rf + erf, bins, baseline=rf - erf, fill=True, color=FLOOR_COLOR, alpha=0.5)
    mplhep.histplot(hr, bins, yerr=er, histtype="errorbar", color=REFERENCE_COLOR, label=labels.reference, ax=ax,
                    markersize=3)
    mplhep.histplot(hc, bins, yerr=ec, histtype="step", color=CANDIDATE_COLOR, label=labels.candidate, ax=ax)
    rc, erc = _ratio(hc, ec, hr, er)
    centres, ok = 0.5 * (bins[1:] + bins[:-1]), np.isfinite(rc)
    rax.errorbar(centres[ok], rc[ok], yerr=np.nan_to_num(erc[ok]), color=CANDIDATE_COLOR, marker="s", ms=2.5, lw=0,
                 elinewidth=1)
    rax.axhline(1.0, color=REFERENCE_COLOR, lw=0.8)
    rax.set_ylim(0.5, 1.5)
    rax.set_ylabel("ratio to sim.", fontsize=9)
    rax.set_xlabel(axis_label(quantity, unit), fontsize=10)
    per = "1" if unit in ("", "1") else f"1/{unit}"
    ax.set_ylabel(axis_label("density", per), fontsize=10)
    rax.tick_params(labelsize=8)
    _finish(ax, logx, logy, title, legend)


def profile_stats(x: np.ndarray, y: np.ndarray, edges: np.ndarray, stat: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """Per bin of x: the mean of y and its standard error (stat="mean"), the median and its
    large-sample error 1.2533 sd / sqrt(n) (stat="median"), or the relative spread sd/mean and
    its error sd/mean / sqrt(2 (n - 1)) (stat="resolution"); NaN where a bin holds fewer than 2."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    b = np.digitize(x, edges) - 1
    val, err = np.full(len(edges) - 1, np.nan), np.full(len(edges) - 1, np.nan)
    for i in range(len(edges) - 1):
        v = y[(b == i) & np.isfinite(y)]
        if len(v) < 2:
            continue
        sd = v.std(ddof=1)
        if stat == "mean":
            val[i], err[i] = v.mean(), sd / np.sqrt(len(v))
        elif stat == "median":
            val[i], err[i] = np.median(v), 1.2533 * sd / np.sqrt(len(v))
        else:
            val[i] = sd / v.mean()
            err[i] = val[i] / np.sqrt(2 * (len(v) - 1))
    return val, err


def compare_profile(ax, x, reference, candidate, floor, xquantity: str, xunit: str, yquantity: str, yunit: str,
                    labels: Labels = Labels(), title: str | None = None, logx: bool = False, logy: bool = False,
                    legend: bool = False) -> None:
    """Profiles (value, error) at the points x: the reference and the candidate with error bars,
    the floor sample's as a band."""
    if floor is not None:
        v, e = floor
        ax.fill_between(x, v - e, v + e, color=FLOOR_COLOR, alpha=0.5, label=labels.floor, step=None)
    for (v, e), color, label, marker in ((reference, REFERENCE_COLOR, labels.reference, "o"),
                                         (candidate, CANDIDATE_COLOR, labels.candidate, "s")):
        ax.errorbar(x, v, yerr=e, color=color, marker=marker, ms=3, lw=1, capsize=1.5, label=label)
    ax.set_xlabel(axis_label(xquantity, xunit), fontsize=10)
    ax.set_ylabel(axis_label(yquantity, yunit), fontsize=10)
    _finish(ax, logx, logy, title, legend)


def _finish(ax, logx: bool, logy: bool, title: str | None, legend: bool) -> None:
    """What every comparison panel ends with: tick size, log axes, title and legend."""
    ax.tick_params(labelsize=8)
    if logx:
        ax.set_xscale("log")
        readable_log(ax.xaxis)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=9)
    if legend:
        ax.legend(fontsize=7)
