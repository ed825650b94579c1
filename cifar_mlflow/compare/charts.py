"""What compare draws, with matplotlib: each comparison's curves (and, for models, bars of size,
speed and accuracy), its forest plot of differences, and pages of every configuration's runs.

A report of 100 runs holds dozens of figures, and matplotlib spends much of a figure's time
making its axes. So each kind of figure is made once per report (ReusedFigure) and each chart
adds only its data, limits and text. measured: a comparison's two figures take ~30% less CPU
reused than made afresh (150-200 ms against 190-300 ms here). A drawn figure is encoded as PNG
on a thread of its own (PngWriter) while the next is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import image
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..core.background import Background
from .study import FACTOR_VALUES, FACTORS, Comparison, Configuration, RunRecord, seed_band

# matplotlib's tab10
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip
TRAIN_COLOUR, TEST_COLOUR, VAL_COLOUR = PALETTE[0], PALETTE[1], PALETTE[2]
SPLITS = (("train", TRAIN_COLOUR), ("val", VAL_COLOUR), ("test", TEST_COLOUR))
NOTE_COLOUR, OFF_SCALE_COLOUR, FLOOR_COLOUR = "#555555", "#a00000", "#999999"
DPI = 100
TICKS = 6  # at most, per axis, where the limits are
LABELS = 5  # tick labels at most, per axis: text is a third of a chart's drawing time (profiled)
ROUND = [1, 2, 5, 10]  # tick steps
MARKERS_UP_TO = 10  # epochs: with few points a line needs markers (one epoch is a lone point)
# Cross-entropy of a uniform guess over 10 classes is ln 10 = 2.30; a run far above it has
# diverged, so a loss axis stops at twice that.
LOSS_AXIS_CAP = 2 * math.log(10)
BAND_NOTE = "lines: mean over a configuration's runs (n in the legend); shading: their min to max"
# (metric, axis label, scale, highest value shown)
CURVES = (("test_acc", "test accuracy (%)", 100.0, 100.0),
          ("train_loss", "train loss (cross-entropy)", 1.0, LOSS_AXIS_CAP))  # fmt: skip
BAR_HEADROOM = 1.25  # the tallest bar fills 1/1.25 of its axes, leaving room for its label
BARS = (("model_params", "parameters", 1e-6, "{:.2f}M"),
        ("seconds_per_epoch", "mean seconds per epoch", 1.0, "{:.1f} s"),
        ("headline", "test accuracy (headline)", 100.0, "{:.1f}%"))  # fmt: skip
CONFIGURATIONS_PER_PAGE = 4  # columns of a runs page
JUDGED = {"color": TEST_COLOUR, "markeredgecolor": "black", "markersize": 5}  # a run's headline
# (metric kind, axis label, scale, highest value shown) of a runs page's two rows
RUN_PANELS = (("acc", "accuracy (%)", 100.0, 100.0),
              ("loss", "loss (cross-entropy)", 1.0, LOSS_AXIS_CAP))  # fmt: skip


def factor_colours(configurations: Iterable[Configuration]) -> dict[str, dict[str, str]]:
    """{factor: {value: colour}}: registry order first, so a value has the same colour in every
    chart (and in every report of the same study)."""
    colours = {}
    for factor in FACTORS:
        seen = {c.config.get(factor) for c in configurations} - {None}
        known = FACTOR_VALUES[factor]
        order = [*known, *sorted(seen - set(known))]
        colours[factor] = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(order)}
    return colours


def nice_limits(low: float, high: float, ceiling: float = math.inf) -> tuple[float, float]:
    """Axis limits for non-negative values in [low, high]: the outermost of at most TICKS round
    tick values spanning them and a margin (so no marker sits on the frame), from 0 at the
    lowest, and up to `ceiling` at the highest (values above it leave the chart)."""
    high = min(high, ceiling)
    if not (math.isfinite(low) and math.isfinite(high)):
        return 0.0, 1.0
    margin = 0.04 * (high - low) or 0.05 * abs(high) or 1.0
    ticks = MaxNLocator(TICKS).tick_values(low - margin, high + margin)
    return max(float(ticks[0]), 0.0), min(float(ticks[-1]), ceiling)


def epoch_limits(max_epoch: int) -> tuple[float, float]:
    pad = max(0.5, max_epoch * 0.02)
    return 1 - pad, max_epoch + pad


def _epoch_axes(ax, ylabel: str = "", xlabel: str = "epoch") -> None:
    """Values against epoch: a few round ticks, a light grid."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    # min_n_ticks=1: a one-epoch axis shows just "1", not 0.6, 0.8...
    ax.xaxis.set_major_locator(MaxNLocator(LABELS, integer=True, steps=ROUND, min_n_ticks=1))
    ax.yaxis.set_major_locator(MaxNLocator(LABELS, steps=ROUND))


def _marker(epochs: np.ndarray) -> str:
    return "o" if len(epochs) <= MARKERS_UP_TO else ""


class PngWriter(Background):
    """Writes drawn figures as PNG files on a thread of its own, each handed to `written` once
    whole. Pillow's encoder lets go of the GIL, so the next figure is drawn meanwhile (encoding
    is a sixth of a figure's time). Leaving the block waits for every file; the first that
    failed raises. measured: the factorial report of bench/bench_compare.py, 59 figures,
    in 4.4-4.8 s instead of 5.1-5.6 s of wall time (CPU time the same), the same pixels."""

    def __init__(self, written: Callable[[Path], None] = lambda path: None):
        super().__init__(1, "png")
        self.written = written

    def __call__(self, figure: Figure, path: Path) -> None:
        figure.canvas.draw()
        pixels = np.array(figure.canvas.buffer_rgba())  # a copy: the next chart draws over it
        self.submit(self._write, pixels, path)

    def _write(self, pixels: np.ndarray, path: Path) -> None:
        image.imsave(path, pixels, format="png", dpi=DPI)
        self.written(path)


class ReusedFigure:
    """A figure drawn chart after chart: its frame (axes, labels) is made once, and a chart's own
    artists stay on it until the next chart's replace them."""

    def __init__(self, width: float, height: float, png: PngWriter):
        self.figure = Figure(figsize=(width, height), dpi=DPI)
        FigureCanvasAgg(self.figure)
        self.png = png
        self.drawn: list[Artist] = []

    def write(self, drawn: list[Artist], path: Path) -> None:
        """Take the last chart's artists off, so that only `drawn` shows, and write it as PNG."""
        for artist in self.drawn:
            artist.remove()
        self.drawn = drawn
        self.png(self.figure, path)


class ComparisonFigures(ReusedFigure):
    """Test accuracy and train loss against epoch, one line (mean, min-max band) per value of the
    factor; the model comparison adds bars of size, speed and headline accuracy."""

    def __init__(self, factor: str, colours: Mapping[str, str], png: PngWriter):
        self.factor, self.colours = factor, colours
        with_bars = factor == "model"
        height = 8.0 if with_bars else 4.8
        super().__init__(11, height, png)
        # Margins in inches. measured: constrained layout adds ~40% to a chart's drawing time.
        grid = self.figure.add_gridspec(2 if with_bars else 1, 6, left=0.07, right=0.98,
                                        top=1 - 0.85 / height, bottom=0.85 / height,
                                        hspace=0.45, wspace=1.4)  # fmt: skip
        self.curve_axes = [self.figure.add_subplot(grid[0, :3]),
                           self.figure.add_subplot(grid[0, 3:])]  # fmt: skip
        for ax, (_, ylabel, _, _) in zip(self.curve_axes, CURVES):
            _epoch_axes(ax, ylabel)
        self.bar_axes = []
        for i, (_, title, _, _) in enumerate(BARS if with_bars else ()):
            ax = self.figure.add_subplot(grid[1, 2 * i : 2 * i + 2])
            ax.set_title(title, fontsize="medium")
            ax.set_yticks([])  # the bars carry their values
            ax.tick_params(axis="x", length=0)
            for side in ("left", "right", "top"):
                ax.spines[side].set_visible(False)
            self.bar_axes.append(ax)
        self.title = self.figure.suptitle("", weight="bold", y=1 - 0.1 / height, va="top")
        self.figure.text(0.5, 0.01, BAND_NOTE, ha="center", va="bottom", fontsize="small",
                         color=NOTE_COLOUR)  # fmt: skip
        self.legend_top = 1 - 0.42 / height

    def save(self, comparison: Comparison, title: str, path: Path) -> None:
        self.title.set_text(title)
        colours = [self.colours[c.config[self.factor]] for c in comparison.configurations]
        handles = [Line2D([], [], color=colour, linewidth=2.5) for colour in colours]
        labels = [f"{comparison.label(c)} (n={len(c.runs)})" for c in comparison.configurations]
        drawn = [self.figure.legend(handles, labels, loc="upper center", ncols=len(labels),
                                    bbox_to_anchor=(0.5, self.legend_top), frameon=False)]  # fmt: skip
        for ax, curve in zip(self.curve_axes, CURVES):
            drawn += self._curves(ax, comparison.configurations, colours, *curve)
        for ax, bar in zip(self.bar_axes, BARS):
            drawn += self._bars(ax, comparison, colours, *bar)
        self.write(drawn, path)

    @staticmethod
    def _curves(ax, configurations: Sequence[Configuration], colours: Sequence[str], key: str,
                _: str, scale: float, ceiling: float) -> list[Artist]:  # fmt: skip
        drawn, low, high, last_epoch = [], math.inf, -math.inf, 1
        for configuration, colour in zip(configurations, colours):
            band = seed_band([r.curve(key) for r in configuration.runs])
            drawn += ax.plot(band.epochs, band.mean * scale, color=colour,
                             marker=_marker(band.epochs), markersize=4)  # fmt: skip
            if band.n > 1 and len(band.epochs) > 1:
                drawn.append(ax.fill_between(band.epochs, band.low * scale, band.high * scale,
                                             color=colour, alpha=0.2, linewidth=0))  # fmt: skip
            elif band.n > 1:  # a band one epoch wide is a line
                drawn.append(ax.vlines(band.epochs, band.low * scale, band.high * scale,
                                       color=colour))  # fmt: skip
            low, high = min(low, np.nanmin(band.low)), max(high, np.nanmax(band.high))
            last_epoch = max(last_epoch, int(band.epochs[-1]))
        ax.set_ylim(*nice_limits(low * scale, high * scale, ceiling))
        ax.set_xlim(*epoch_limits(last_epoch))
        return drawn

    @staticmethod
    def _bars(ax, comparison: Comparison, colours: Sequence[str], stat: str, _: str,
              scale: float, fmt: str) -> list[Artist]:  # fmt: skip
        """Bars relative to the tallest (no value axis), each labelled with its value; a
        black error bar of ± one standard deviation over the runs."""
        configurations = comparison.configurations
        if stat == "model_params":
            stats = [((c.model_params or 0) * scale, 0.0) for c in configurations]
        else:
            stats = [(mean * scale, (std or 0.0) * scale) for mean, std in
                     (c.stat(stat) for c in configurations)]  # fmt: skip
        means, stds = np.array(stats).T
        slots = np.arange(len(stats))
        ax.set_xticks(slots, [comparison.label(c) for c in configurations])
        ax.set_xlim(-0.6, len(stats) - 0.4)
        ax.set_ylim(0, (np.max(means + stds) or 1.0) * BAR_HEADROOM)
        drawn: list[Artist] = [ax.bar(slots, means, width=0.7, color=colours)]
        if stds.any():
            drawn.append(ax.errorbar(slots, means, yerr=stds, fmt="none", ecolor="black",
                                     capsize=5, elinewidth=1.5))  # fmt: skip
        drawn += [ax.annotate(fmt.format(mean), (slot, mean + std), xytext=(0, 4),
                              textcoords="offset points", ha="center", va="bottom")
                  for slot, mean, std in zip(slots, means, stds)]  # fmt: skip
        return drawn


class ForestFigures(ReusedFigure):
    """A comparison's differences from its reference at a glance (a forest plot): a row per
    value, a dot at the mean difference in headline test accuracy, a bar for its 95% CI (a
    hollow dot without one: n = 1), and a grey band for the test set's sampling floor. One
    figure serves every comparison of a factor, with as many rows as the largest."""

    LEFT, RIGHT = 0.2, 0.6  # the axes' share of the width; labels left of it, numbers right

    def __init__(self, rows: int, png: PngWriter):
        height = 1.6 + 0.45 * rows
        super().__init__(11, height, png)
        self.figure.subplots_adjust(left=self.LEFT, right=self.RIGHT, top=1 - 0.5 / height,
                                    bottom=0.9 / height)  # fmt: skip
        self.ax = self.figure.add_subplot()
        self.ax.set_ylim(rows - 0.5, -0.5)  # the first row on top
        self.ax.tick_params(axis="y", length=0)
        self.ax.axvline(0, color=NOTE_COLOUR, linewidth=1)
        self.ax.grid(axis="x", alpha=0.3)
        self.ax.set_xlabel("difference in test accuracy (percentage points)")
        self.ax.xaxis.set_major_locator(MaxNLocator(LABELS, symmetric=True, steps=ROUND))
        self.title = self.figure.suptitle("", weight="bold", y=1 - 0.08 / height, va="top")
        self.note = self.figure.text(0.5, 0.06 / height, "", ha="center", va="bottom",
                                     color=NOTE_COLOUR)  # fmt: skip

    def save(self, stats, title: str, colours: Mapping[str, str], path: Path) -> None:
        """`stats`: a stats.ComparisonStats."""
        comparison, ax = stats.comparison, self.ax
        self.title.set_text(title)
        # Paired on the same images, the single-accuracy floor does not apply.
        floor = 0.0 if stats.image_level else (stats.floor or 0.0) * 100
        ends = [(d.mean, d.low, d.high, *((d.image.low, d.image.high) if d.image else ()))
                for d in stats.differences]  # fmt: skip
        extent = [abs(v) * 100 for row in ends for v in row if v is not None and math.isfinite(v)]
        reach = max([*extent, floor, 0.5]) * 1.1
        ticks = MaxNLocator(LABELS, symmetric=True, steps=ROUND).tick_values(-reach, reach)
        ax.set_xlim(float(ticks[0]), float(ticks[-1]))
        rows = range(len(stats.differences))
        ax.set_yticks(rows, [f"{d.value} − {d.reference}" for d in stats.differences])
        drawn: list[Artist] = []
        if floor:  # known where the runs logged their test set's size
            drawn.append(ax.axvspan(-floor, floor, color=FLOOR_COLOUR, alpha=0.25, linewidth=0))
        by_label = {comparison.label(c): c for c in comparison.configurations}
        for row, d in zip(rows, stats.differences):
            colour = colours[by_label[d.value].config[comparison.factor]]
            if d.low is not None:
                drawn += ax.plot([d.low * 100, d.high * 100], [row, row], color=colour,
                                 linewidth=2.5)  # fmt: skip
            if d.image:  # paired on the same images: a thin bar just below
                drawn += ax.plot([d.image.low * 100, d.image.high * 100], [row + 0.2] * 2,
                                 color=colour, linewidth=1)  # fmt: skip
            if math.isfinite(d.mean):
                drawn += ax.plot([d.mean * 100], [row], marker="o", markersize=8, color=colour,
                                 markerfacecolor=colour if d.low is not None else "white")  # fmt: skip
            drawn.append(ax.text(1.03, row, forest_text(d), va="center",
                                 transform=ax.get_yaxis_transform()))  # fmt: skip
        note = "dot: mean difference over seeds; bar: its 95% CI; hollow: n = 1, no interval"
        if any(d.image for d in stats.differences):
            note += "; thin bar: 95% CI paired on the same test images"
        if floor:
            note += f"; grey: test-set sampling floor ±{floor:.2f} pp (n_test = {stats.n_test})"
        self.note.set_text(note)
        self.write(drawn, path)


def forest_text(d) -> str:
    """A forest row's numbers: '+1.23 pp [0.40, 2.06], p = 0.012' (Holm-corrected)."""
    if not math.isfinite(d.mean):
        return "not measured"
    text = f"{d.mean * 100:+.2f} pp"
    if d.low is None:
        mcnemar = d.image and d.image.p_holm is not None
        return f"{text}, n = 1" + (f", McNemar p = {d.image.p_holm:.2g}" if mcnemar else "")
    p = "p undefined" if d.p_holm is None else f"p (Holm) = {d.p_holm:.2g}"
    return f"{text} [{d.low * 100:.2f}, {d.high * 100:.2f}], {p} (n {d.n})"


class RunPages(ReusedFigure):
    """Every run, on pages of a few configurations side by side, a column each: accuracy above
    loss against epoch, for train, validation and test, a thin line per run, and a dot at the
    epoch each run is judged by. A page's columns share their axes (fitted to the page's values;
    loss up to LOSS_AXIS_CAP, with a note naming the seeds whose loss leaves it), so only the
    outer axes carry tick labels; one figure serves every page."""

    def __init__(self, png: PngWriter):
        height = 5.8
        super().__init__(11, height, png)
        self.figure.subplots_adjust(left=0.065, right=0.99, top=1 - 1.05 / height,
                                    bottom=0.5 / height, hspace=0.08, wspace=0.06)  # fmt: skip
        self.grid = self.figure.subplots(2, CONFIGURATIONS_PER_PAGE, sharex="all", sharey="row")
        for (row, column), ax in np.ndenumerate(self.grid):  # labels outside only
            _epoch_axes(ax, RUN_PANELS[row][1] if column == 0 else "", "epoch" if row else "")
        handles = [Line2D([], [], color=colour, label=split) for split, colour in SPLITS]
        handles.append(Line2D([], [], marker="o", linestyle="", **JUDGED,
                              label="headline: test accuracy at the epoch a run is judged by"))  # fmt: skip
        self.figure.legend(handles=handles, loc="upper center", ncols=len(handles),
                           frameon=False, bbox_to_anchor=(0.5, 1 - 0.02 / height))  # fmt: skip

    def save(self, columns: Sequence[tuple[str, Configuration]], path: Path) -> None:
        """`columns`: (caption, configuration), CONFIGURATIONS_PER_PAGE at most."""
        self._fit([run for _, configuration in columns for run in configuration.runs])
        for column, axes in enumerate(self.grid.T):  # a last page may have fewer columns
            for ax in axes:
                ax.set_visible(column < len(columns))
        drawn: list[Artist] = []
        for (caption, configuration), (acc, loss) in zip(columns, self.grid.T):
            acc.set_title(caption, loc="left", fontsize="small")
            runs = configuration.runs
            for ax, (kind, _, scale, _) in zip((acc, loss), RUN_PANELS):
                drawn += [_run_lines(ax, runs, split, kind, scale, colour)
                          for split, colour in SPLITS]  # fmt: skip
            drawn += acc.plot([r.selected_epoch for r in runs], [r.headline * 100 for r in runs],
                              "o", **JUDGED)  # fmt: skip
            drawn += _note_off_scale(loss, runs)
        self.write(drawn, path)

    def _fit(self, runs: Sequence[RunRecord]) -> None:
        """Each row's height to its values on this page, the epochs to the longest run."""
        for row, (kind, _, scale, ceiling) in zip(self.grid, RUN_PANELS):
            values = np.concatenate([r.curve(f"{s}_{kind}").values for r in runs
                                     for s, _ in SPLITS]) * scale  # fmt: skip
            finite = values[np.isfinite(values)]
            low, high = (finite.min(), finite.max()) if len(finite) else (math.nan, math.nan)
            row[0].set_ylim(*nice_limits(0.0 if kind == "loss" else low, high, ceiling))
        last_epoch = max(int(r.curve("test_acc").epochs.max()) for r in runs)
        self.grid[0, 0].set_xlim(*epoch_limits(last_epoch))


def _run_lines(ax, runs: Sequence[RunRecord], split: str, kind: str, scale: float,
               colour: str) -> Line2D:  # fmt: skip
    """One split's curves of every run as one line, broken (NaN) between runs: one artist to
    make and draw, not one per run (measured: ~0.5 ms each)."""
    curves = [run.curve(f"{split}_{kind}") for run in runs]
    gap = np.array([np.nan])
    epochs = np.concatenate([part for curve in curves for part in (curve.epochs, gap)])
    values = np.concatenate([part for curve in curves for part in (curve.values * scale, gap)])
    (line,) = ax.plot(epochs, values, color=colour, linewidth=1, alpha=0.7,
                      marker=_marker(curves[0].epochs), markersize=3)  # fmt: skip
    return line


def _note_off_scale(ax, runs: Sequence[RunRecord]) -> list[Artist]:
    """A diverged loss leaves the capped axis: say whose, and how high it went."""
    off_scale = [run for run in runs if _highest_loss(run) > ax.get_ylim()[1]]
    if not off_scale:
        return []
    seeds = ", ".join(str(run.seed) for run in off_scale)
    top = max(_highest_loss(run) for run in off_scale)
    return [ax.text(0.04, 0.95, f"seed {seeds}: loss off the\nscale, up to {top:.3g}", va="top",
                    transform=ax.transAxes, color=OFF_SCALE_COLOUR, fontsize="small")]  # fmt: skip


def _highest_loss(run: RunRecord) -> float:
    values = np.concatenate([run.curve(f"{split}_loss").values for split, _ in SPLITS])
    values = values[~np.isnan(values)]  # an infinite loss counts: it is off every scale
    return float(values.max()) if len(values) else -math.inf
