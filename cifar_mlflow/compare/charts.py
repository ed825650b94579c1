"""What compare draws: a chart per comparison and a figure per run, as PNG files.

A report has a hundred figures, and on this 2-core machine matplotlib spends ~50 ms drawing each
axes (ticks, tick labels, grid) and lays text out glyph by glyph in Python. So each kind of
figure here is drawn through a stencil.Stencil: matplotlib draws its frame once per set of axis
limits, and per chart only the chart's own lines and bands; Pillow writes titles, legends and
bars onto those pixels. Axis limits are rounded to tick values, so the charts of one study share
a few frames. Measured (bench/bench_compare.py, docs/compare-benchmark.md, 2026-12-01): 100 run
figures in 0.71 s of CPU, against 5.96 s with one matplotlib figure reused for every run (data
swapped in, axes fitted, text by matplotlib) and 10.5 s with a fresh pyplot figure each. The
whole compare of 100 runs takes 2.9-3.3 s; with the reused figure it would take ~8 s. Run
figures fitted to each run's data, with validation curves, cost 1.13 s of CPU for 100 runs of 40
epochs (4 frames; measured 2026-12-01 at load 17, before the benchmark was rerun).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Polygon
from matplotlib.ticker import MaxNLocator

from .stencil import DPI, Box, Label, Stencil, error_bar, legend_row
from .study import FACTOR_VALUES, FACTORS, Comparison, Configuration, RunRecord, seed_band

# matplotlib's tab10
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip
TRAIN_COLOUR, TEST_COLOUR, VAL_COLOUR = PALETTE[0], PALETTE[1], PALETTE[2]
SPLITS = (("train", TRAIN_COLOUR), ("val", VAL_COLOUR), ("test", TEST_COLOUR))
TICKS = 6  # at most, per axis
MARKERS_UP_TO = 10  # epochs: with few points a line needs markers (one epoch is a lone point)
# Cross-entropy of a uniform guess over 10 classes is ln 10 = 2.30; a run far above it has
# diverged, so the shared loss axis of the run figures stops at twice that.
LOSS_AXIS_CAP = 2 * math.log(10)
BAND_NOTE = "lines: mean over a configuration's runs (n in the legend); shading: their min to max"
# (metric, axis label, scale, highest value shown)
CURVES = (("test_acc", "test accuracy (%)", 100.0, 100.0),
          ("train_loss", "train loss (cross-entropy)", 1.0, LOSS_AXIS_CAP))  # fmt: skip
BAR_HEADROOM = 1.25  # the tallest bar fills 1/1.25 of its axes, leaving room for its label
BARS = (("model_params", "parameters", 1e-6, "{:.2f}M"),
        ("seconds_per_epoch", "mean seconds per epoch", 1.0, "{:.1f} s"),
        ("headline", "test accuracy (headline)", 100.0, "{:.1f}%"))  # fmt: skip


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


def _curve_axes(ax, ylabel: str) -> None:
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    # min_n_ticks=1: a one-epoch axis shows just "1", not 0.6, 0.8...
    ax.xaxis.set_major_locator(MaxNLocator(TICKS, integer=True, min_n_ticks=1))
    ax.yaxis.set_major_locator(MaxNLocator(TICKS))


class ComparisonFigures:
    """Test accuracy and train loss against epoch, one line (mean, min-max band) per value of the
    factor; the model comparison adds bars of size, speed and best accuracy."""

    def __init__(self, factor: str, colours: Mapping[str, str]):
        self.factor, self.colours = factor, colours
        with_bars = factor == "model"
        height = 8.0 if with_bars else 4.8
        figure = Figure(figsize=(11, height), dpi=DPI)
        # Margins in inches; matplotlib's constrained layout would double the drawing time.
        grid = figure.add_gridspec(2 if with_bars else 1, 6, left=0.07, right=0.98,
                                   top=1 - 0.8 / height, bottom=0.85 / height, hspace=0.45,
                                   wspace=1.4)  # fmt: skip
        self.curve_axes = [figure.add_subplot(grid[0, :3]), figure.add_subplot(grid[0, 3:])]
        for ax, (_, ylabel, _, _) in zip(self.curve_axes, CURVES):
            _curve_axes(ax, ylabel)
        self.bar_axes = []
        for i, (_, title, _, _) in enumerate(BARS if with_bars else ()):
            ax = figure.add_subplot(grid[1, 2 * i : 2 * i + 2])
            ax.set_title(title, fontsize="medium")
            # Bars are drawn by Pillow (ax.bar with error bars: ~30 ms each), relative to the
            # tallest, and carry their values: the frame needs no ticks and suits every chart.
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ("left", "right", "top"):
                ax.spines[side].set_visible(False)
            self.bar_axes.append(ax)
        figure.text(0.5, 0.01, BAND_NOTE, ha="center", va="bottom", fontsize="small",
                    color="#555555")  # fmt: skip
        self.stencil = Stencil(figure)

    def save(self, comparison: Comparison, title: str, path: Path) -> None:
        axes = [*self.curve_axes, *self.bar_axes]
        before = {id(a) for ax in axes for a in ax.get_children()}
        width = self.stencil.figure.bbox.width
        labels = [Label(width / 2, 10, title, "mt", bold=True, points=12, width=width - 20)]
        labels += legend_row([(None, f"{self.factor}:")] + [
            (self.colours[c.config[self.factor]], f"{comparison.label(c)} (n={len(c.runs)})")
            for c in comparison.configurations
        ], 48, width)  # fmt: skip
        for ax, curve in zip(self.curve_axes, CURVES):
            self._curves(ax, comparison, *curve)
        boxes = []
        for ax, bar in zip(self.bar_axes, BARS):
            bar_labels, bar_boxes = self._bars(ax, comparison, *bar)
            labels += bar_labels
            boxes += bar_boxes
        new = [a for ax in axes for a in ax.get_children() if id(a) not in before]
        for artist in new:
            artist.set_animated(True)
        self.stencil.save(path, new, labels, boxes)
        for artist in new:
            artist.remove()

    def _curves(self, ax, comparison: Comparison, key: str, _: str, scale: float,
                ceiling: float) -> None:  # fmt: skip
        low, high, last_epoch = math.inf, -math.inf, 1
        for configuration in comparison.configurations:
            band = seed_band([r.curve(key) for r in configuration.runs])
            colour = self.colours[configuration.config[self.factor]]
            marker = "o" if len(band.epochs) <= MARKERS_UP_TO else ""
            # add_artist, not plot/fill_between/add_patch: the limits are set below, and working
            # out data limits cost ~10 ms a band (measured).
            ax.add_artist(Line2D(band.epochs, band.mean * scale, color=colour, marker=marker,
                                 markersize=4, transform=ax.transData))  # fmt: skip
            if band.n > 1 and len(band.epochs) > 1:
                outline = np.concatenate([band.high, band.low[::-1]]) * scale
                epochs = np.concatenate([band.epochs, band.epochs[::-1]])
                ax.add_artist(Polygon(np.column_stack([epochs, outline]), facecolor=colour,
                                      alpha=0.2, linewidth=0, transform=ax.transData))  # fmt: skip
            elif band.n > 1:  # a band one epoch wide is a line
                ax.add_artist(Line2D(band.epochs.repeat(2), [band.low[0] * scale,
                                     band.high[0] * scale], color=colour, transform=ax.transData))  # fmt: skip
            low, high = min(low, np.nanmin(band.low)), max(high, np.nanmax(band.high))
            last_epoch = max(last_epoch, int(band.epochs[-1]))
        ax.set_ylim(*nice_limits(low * scale, high * scale, ceiling))
        ax.set_xlim(*epoch_limits(last_epoch))

    def _bars(self, ax, comparison: Comparison, stat: str, _: str, scale: float,
              fmt: str) -> tuple[list[Label], list[Box]]:  # fmt: skip
        configurations = comparison.configurations
        if stat == "model_params":
            stats = [((c.model_params or 0) * scale, 0.0) for c in configurations]
        else:
            stats = [(mean * scale, (std or 0.0) * scale) for mean, std in
                     (c.stat(stat) for c in configurations)]  # fmt: skip
        tallest = max(mean + std for mean, std in stats) or 1.0

        def at(share: float, value: float) -> tuple[float, float]:
            return self.stencil.to_pixels(ax.transAxes, share, value / tallest / BAR_HEADROOM)

        labels, boxes, slot = [], [], 1 / len(stats)
        for i, ((mean, std), configuration) in enumerate(zip(stats, configurations)):
            centre, colour = (i + 0.5) * slot, self.colours[configuration.config[self.factor]]
            left, top = at(centre - 0.35 * slot, mean)
            right, bottom = at(centre + 0.35 * slot, 0)
            boxes.append(Box(left, top, right, bottom, colour))
            x, high = at(centre, mean + std)
            if std:
                boxes += error_bar(x, high, at(centre, mean - std)[1])
            labels.append(Label(x, high - 4, fmt.format(mean), "md"))
            labels.append(Label(x, bottom + 5, comparison.label(configuration), "mt"))
        return labels, boxes


class RunFigures:
    """Each run's loss and accuracy (train, validation, test) against epoch, on axes fitted to
    that run's data, so a short or weak run is not a flat line on the floor. Limits are rounded
    to tick values, so runs of one study still share a few frames (stencil.py)."""

    def __init__(self):
        figure = Figure(figsize=(10, 4.2), dpi=DPI)
        figure.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.76, wspace=0.22)
        self.axes = dict(zip(("loss", "acc"), figure.subplots(1, 2)))
        _curve_axes(self.axes["loss"], "loss (cross-entropy)")
        _curve_axes(self.axes["acc"], "accuracy (%)")
        self.lines = {}
        for kind, ax in self.axes.items():
            for split, colour in SPLITS:
                (line,) = ax.plot([], [], color=colour, label=split, ms=4, animated=True)
                self.lines[f"{split}_{kind}"] = line
        figure.legend(handles=[self.lines[f"{split}_loss"] for split, _ in SPLITS], ncols=3,
                      loc="upper right", bbox_to_anchor=(0.98, 0.9))  # fmt: skip
        self.stencil = Stencil(figure)

    def _fit(self, run: RunRecord) -> None:
        """Axis limits from this run's points: loss from 0, up to LOSS_AXIS_CAP at most."""
        for kind, ax in self.axes.items():
            scale = 100.0 if kind == "acc" else 1.0
            values = np.concatenate([run.curve(f"{split}_{kind}").values for split, _ in SPLITS])
            finite = values[np.isfinite(values)] * scale
            if not len(finite):
                ax.set_ylim(0, 1.0 if kind == "loss" else 100.0)
            elif kind == "loss":
                ax.set_ylim(*nice_limits(0, finite.max(), LOSS_AXIS_CAP))
            else:
                ax.set_ylim(*nice_limits(finite.min(), finite.max(), ceiling=100.0))
            ax.set_xlim(*epoch_limits(int(run.curve("test_acc").epochs.max())))

    def save(self, run: RunRecord, subtitle: str, path: Path) -> None:
        self._fit(run)
        for key, line in self.lines.items():
            curve = run.curve(key)
            line.set_data(curve.epochs, curve.values * (100.0 if key.endswith("acc") else 1.0))
            line.set_marker("o" if len(curve.epochs) <= MARKERS_UP_TO else "")
        width = self.stencil.figure.bbox.width - 290  # beside the legend
        labels = [Label(70, 12, f"{run.name}  (run {run.run_id[:12]})", bold=True, points=11),
                  Label(70, 40, subtitle, width=width)]  # fmt: skip
        loss_axes = self.lines["train_loss"].axes
        top = loss_axes.get_ylim()[1]
        for split in ("train", "test"):  # a diverged loss leaves the capped axis: say so
            values = run.curve(f"{split}_loss").values
            if len(values) and not np.nanmax(values) <= top:
                x, y = self.stencil.to_pixels(loss_axes.transAxes, 0.02, 0.97)
                labels.append(Label(x, y + 16 * (split == "test"), f"{split} loss off the scale, "
                                    f"up to {np.nanmax(values):.3g}", colour="#a00000"))  # fmt: skip
        self.stencil.save(path, self.lines.values(), labels)


class ForestFigures:
    """A comparison's differences from its reference at a glance (a forest plot): a row per
    value, a dot at the mean difference in headline test accuracy, a bar for its 95% CI (a
    hollow dot without one: n = 1), and a grey band for the test set's sampling floor. The frame
    is shared by every comparison of a factor with the same rounded x-range."""

    LEFT, RIGHT = 0.2, 0.6  # the axes' share of the width; labels left of it, numbers right

    def __init__(self, rows: int):
        self.rows = rows
        height = 1.6 + 0.45 * rows
        figure = Figure(figsize=(11, height), dpi=DPI)
        figure.subplots_adjust(left=self.LEFT, right=self.RIGHT, top=1 - 0.5 / height,
                               bottom=0.9 / height)  # fmt: skip
        self.ax = figure.add_subplot()
        self.ax.set_yticks([])
        self.ax.set_ylim(rows - 0.5, -0.5)  # the first row on top
        self.ax.axvline(0, color="#555555", linewidth=1)
        self.ax.grid(axis="x", alpha=0.3)
        self.ax.set_xlabel("difference in test accuracy (percentage points)")
        self.ax.xaxis.set_major_locator(MaxNLocator(TICKS, symmetric=True))
        self.stencil = Stencil(figure)

    def save(self, stats, title: str, colours: Mapping[str, str], path: Path) -> None:
        """`stats`: a stats.ComparisonStats."""
        comparison, ax = stats.comparison, self.ax
        floor = (stats.floor or 0.0) * 100
        extent = [abs(v) * 100 for d in stats.differences
                  for v in (d.mean, d.low, d.high) if v is not None and math.isfinite(v)]  # fmt: skip
        reach = max([*extent, floor, 0.5]) * 1.1
        ticks = MaxNLocator(TICKS, symmetric=True).tick_values(-reach, reach)
        ax.set_xlim(float(ticks[0]), float(ticks[-1]))
        artists = []
        if floor:
            artists.append(Polygon([(-floor, -0.5), (floor, -0.5), (floor, self.rows - 0.5),
                                    (-floor, self.rows - 0.5)], facecolor="#999999", alpha=0.25,
                                   linewidth=0, transform=ax.transData))  # fmt: skip
        width = self.stencil.figure.bbox.width
        labels = [Label(width / 2, 8, title, "mt", bold=True, points=12, width=width - 20)]
        by_label = {comparison.label(c): c for c in comparison.configurations}
        for row, d in enumerate(stats.differences):
            colour = colours[by_label[d.value].config[comparison.factor]]
            if d.low is not None:
                artists.append(Line2D([d.low * 100, d.high * 100], [row, row], color=colour,
                                      linewidth=2.5, transform=ax.transData))  # fmt: skip
            if math.isfinite(d.mean):
                artists.append(Line2D([d.mean * 100], [row], marker="o", markersize=8,
                                      color=colour, transform=ax.transData,
                                      markerfacecolor=colour if d.low is not None else "white"))  # fmt: skip
            x, y = self.stencil.to_pixels(ax.transData, ax.get_xlim()[0], row)
            labels.append(Label(x - 10, y, f"{d.value} − {d.reference}", "rm"))
            x = self.stencil.to_pixels(ax.transAxes, 1, 0)[0]
            labels.append(Label(x + 12, y, forest_text(d), "lm", width=width - x - 20))
        note = "dot: mean difference over seeds; bar: its 95% CI; hollow: n = 1, no interval"
        if floor:
            note += f"; grey: test-set sampling floor ±{floor:.2f} pp (n_test = {stats.n_test})"
        labels.append(Label(width / 2, self.stencil.figure.bbox.height - 6, note, "md",
                            colour="#555555", width=width - 20))  # fmt: skip
        for artist in artists:
            artist.set_animated(True)
            ax.add_artist(artist)
        self.stencil.save(path, artists, labels)
        for artist in artists:
            artist.remove()


def forest_text(d) -> str:
    """A forest row's numbers: '+1.23 pp [0.40, 2.06], p = 0.012' (Holm-corrected)."""
    if not math.isfinite(d.mean):
        return "not measured"
    text = f"{d.mean * 100:+.2f} pp"
    if d.low is None:
        return f"{text}, n = 1"
    p = "p undefined" if d.p_holm is None else f"p (Holm) = {d.p_holm:.2g}"
    return f"{text} [{d.low * 100:.2f}, {d.high * 100:.2f}], {p} (n {d.n})"
