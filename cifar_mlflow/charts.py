"""What compare draws: a chart per comparison and a figure per run, as PNG files.

A report has a hundred figures, and on this 2-core machine matplotlib spends ~50 ms drawing each
axes (ticks, tick labels, grid) and ~0.2 ms on each glyph of text (3.11 lays text out glyph by
glyph in Python). So each kind of figure is a `Stencil`: its frame (axes, ticks, axis labels) is
drawn once per set of axis limits, each chart draws only its own lines, bands and bars onto a
copy of that frame, and its titles and value labels are written by Pillow (~0.4 ms a string).
Axis limits are rounded to tick values, so the charts of one study share a few frames. Measured
in docs/compare-benchmark.md.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from matplotlib import font_manager
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

from .study import FACTOR_VALUES, FACTORS, Comparison, Configuration, RunRecord, seed_band

# matplotlib's tab10
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip
TRAIN_COLOUR, TEST_COLOUR = PALETTE[0], PALETTE[1]
DPI = 100
# Charts have few colours: a 256-colour palette PNG looks the same and, measured on a 1100x820
# chart, takes ~13 ms (quantize + zlib level 1) instead of ~32-50 ms as RGB, at half the size.
PALETTE_COLOURS = 256
TICKS = 6  # at most, per axis
MARKERS_UP_TO = 10  # epochs: with few points a line needs markers (one epoch is a lone point)
# Cross-entropy of a uniform guess over 10 classes is ln 10 = 2.30; a run far above it has
# diverged, so the shared loss axis of the run figures stops at twice that.
LOSS_AXIS_CAP = 2 * math.log(10)
BAND_NOTE = "lines: mean over a configuration's runs (n in the legend); shading: their min to max"
# (metric, axis label, scale, highest value shown)
CURVES = (("test_acc", "test accuracy (%)", 100.0, 100.0),
          ("train_loss", "train loss (cross-entropy)", 1.0, LOSS_AXIS_CAP))  # fmt: skip
BARS = (("model_params", "parameters", 1e-6, "{:.2f}M"),
        ("seconds_per_epoch", "mean seconds per epoch", 1.0, "{:.1f} s"),
        ("best_test_acc", "best test accuracy", 100.0, "{:.1f}%"))  # fmt: skip


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


def describe(config: Mapping[str, str], keys: Iterable[str]) -> str:
    """'resnet18 · sgd · lr 0.01 · 40 epochs' for the keys present, in the given order."""
    parts = []
    for key in keys:
        if key not in config:
            continue
        value = config[key]
        parts.append(
            value if key in FACTORS
            else f"{value} epoch{'' if value == '1' else 's'}" if key == "epochs"
            else f"{key.replace('_', ' ')} {value}"
        )  # fmt: skip
    return " · ".join(parts)


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


def slug(text: str, limit: int = 100) -> str:
    """A file name for `text`; a long one is cut and keeps a hash of the whole."""
    name = re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")
    return name if len(name) <= limit else f"{name[: limit - 9]}-{zlib.crc32(name.encode()):08x}"


def epoch_limits(max_epoch: int) -> tuple[float, float]:
    pad = max(0.5, max_epoch * 0.02)
    return 1 - pad, max_epoch + pad


SWATCH = 22  # pixels: the line before a legend entry


@dataclass(frozen=True)
class Label:
    """Text for Pillow to write: at pixel (x, y) from the top left, anchored as Pillow's anchors
    say ("mt": middle of the top edge, "lt": left top, "md": middle of the bottom edge). A
    swatch colour puts a legend line before it, at (x, y) (then the anchor must be "lm")."""

    x: float
    y: float
    text: str
    anchor: str = "lt"
    bold: bool = False
    points: float = 10
    colour: str = "black"
    swatch: str | None = None


@cache
def _font(bold: bool, points: float) -> ImageFont.FreeTypeFont:
    # matplotlib's own default font, so labels match the tick labels.
    path = font_manager.findfont(font_manager.FontProperties(weight="bold" if bold else "normal"))
    return ImageFont.truetype(path, round(points * DPI / 72))


class Stencil:
    """A figure whose frame is drawn once per set of axis limits; a chart draws its (animated)
    artists on a copy of the frame, then Pillow writes its labels and the PNG."""

    def __init__(self, figure: Figure):
        self.figure = figure
        self.canvas = FigureCanvasAgg(figure)
        self.frames: dict[tuple, object] = {}

    def to_pixels(self, transform, x: float, y: float) -> tuple[float, float]:
        """Pillow's pixel position of (x, y) in a matplotlib transform (y runs down in Pillow)."""
        px, py = transform.transform((x, y))
        return float(px), self.figure.bbox.height - float(py)

    def save(self, path: Path, artists: Iterable[Artist], labels: Iterable[Label]) -> None:
        key = tuple((ax.get_xlim(), ax.get_ylim()) for ax in self.figure.axes)
        if key not in self.frames:
            self.canvas.draw()  # animated artists are left out
            self.frames[key] = self.canvas.copy_from_bbox(self.figure.bbox)
        self.canvas.restore_region(self.frames[key])
        for artist in sorted(artists, key=lambda a: a.get_zorder()):
            artist.axes.draw_artist(artist)
        image = Image.fromarray(np.asarray(self.canvas.buffer_rgba())).convert("RGB")
        draw = ImageDraw.Draw(image)
        for label in labels:
            x = label.x
            if label.swatch:
                draw.line([(x, label.y), (x + SWATCH, label.y)], fill=label.swatch, width=3)
                x += SWATCH + 6
            draw.text((x, label.y), label.text, fill=label.colour, anchor=label.anchor,
                      font=_font(label.bold, label.points))  # fmt: skip
        image.quantize(PALETTE_COLOURS, method=Image.Quantize.FASTOCTREE).save(
            path, compress_level=1
        )


def legend_row(entries: list[tuple[str | None, str]], y: float, width: float) -> list[Label]:
    """A one-line legend centred at height y: (colour or None for a plain heading, text)."""
    gap = 18
    sizes = [(SWATCH + 6 if colour else 0) + _font(False, 10).getlength(text)
             for colour, text in entries]  # fmt: skip
    x = (width - sum(sizes) - gap * (len(entries) - 1)) / 2
    labels = []
    for (colour, text), size in zip(entries, sizes):
        labels.append(Label(x, y, text, "lm", swatch=colour))
        x += size + gap
    return labels


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
            # Bars are drawn relative to the tallest and carry their values, so the frame needs
            # no y axis and is the same for every comparison.
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylim(0, 1.25)
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
        labels = [Label(width / 2, 10, title, "mt", bold=True, points=12)]
        labels += legend_row([(None, f"{self.factor}:")] + [
            (self.colours[c.config[self.factor]], f"{comparison.label(c)} (n={len(c.runs)})")
            for c in comparison.configurations
        ], 48, width)  # fmt: skip
        for ax, curve in zip(self.curve_axes, CURVES):
            self._curves(ax, comparison, *curve)
        for ax, bar in zip(self.bar_axes, BARS):
            labels += self._bars(ax, comparison, *bar)
        new = [a for ax in axes for a in ax.get_children() if id(a) not in before]
        for artist in new:
            artist.set_animated(True)
        self.stencil.save(path, new, labels)
        for ax in axes:
            for container in list(ax.containers):  # bars with their error bars
                container.remove()
        for artist in (a for ax in axes for a in ax.get_children() if id(a) not in before):
            artist.remove()

    def _curves(self, ax, comparison: Comparison, key: str, _: str, scale: float,
                ceiling: float) -> None:  # fmt: skip
        low, high, last_epoch = math.inf, -math.inf, 1
        for configuration in comparison.configurations:
            band = seed_band([r.curve(key) for r in configuration.runs])
            colour = self.colours[configuration.config[self.factor]]
            marker = "o" if len(band.epochs) <= MARKERS_UP_TO else None
            ax.plot(band.epochs, band.mean * scale, color=colour, marker=marker, ms=4)
            if band.n > 1 and len(band.epochs) > 1:
                ax.fill_between(band.epochs, band.low * scale, band.high * scale, color=colour,
                                alpha=0.2, linewidth=0)  # fmt: skip
            elif band.n > 1:  # a band one epoch wide is a line
                ax.vlines(band.epochs, band.low * scale, band.high * scale, color=colour)
            low, high = min(low, np.nanmin(band.low)), max(high, np.nanmax(band.high))
            last_epoch = max(last_epoch, int(band.epochs[-1]))
        ax.set_ylim(*nice_limits(low * scale, high * scale, ceiling))
        ax.set_xlim(*epoch_limits(last_epoch))

    def _bars(self, ax, comparison: Comparison, stat: str, _: str, scale: float,
              fmt: str) -> list[Label]:  # fmt: skip
        configurations = comparison.configurations
        if stat == "model_params":
            stats = [((c.model_params or 0) * scale, 0.0) for c in configurations]
        else:
            stats = [(mean * scale, (std or 0.0) * scale) for mean, std in
                     (c.stat(stat) for c in configurations)]  # fmt: skip
        tallest = max(mean + std for mean, std in stats) or 1.0
        ax.set_xlim(-0.6, len(configurations) - 0.4)
        colours = [self.colours[c.config[self.factor]] for c in configurations]
        errors = [std / tallest for _, std in stats]
        ax.bar(range(len(stats)), [mean / tallest for mean, _ in stats], width=0.7,
               color=colours, yerr=errors if any(errors) else None, capsize=4)  # fmt: skip
        labels = []
        for i, ((mean, std), configuration) in enumerate(zip(stats, configurations)):
            x, top = self.stencil.to_pixels(ax.transData, i, (mean + std) / tallest)
            _, bottom = self.stencil.to_pixels(ax.transData, i, 0)
            labels.append(Label(x, top - 4, fmt.format(mean), "md"))
            labels.append(Label(x, bottom + 5, comparison.label(configuration), "mt"))
        return labels


class RunFigures:
    """Each run's loss and accuracy against epoch, on axes shared by all runs of the report, so
    flipping through the figures compares the runs."""

    def __init__(self, runs: list[RunRecord]):
        max_epoch = max(int(r.curve("test_acc").epochs.max()) for r in runs)
        losses = [v for r in runs for k in ("train_loss", "test_loss") for v in r.curve(k).values]
        finite = [v for v in losses if math.isfinite(v)] or [1.0]
        figure = Figure(figsize=(10, 4.2), dpi=DPI)
        figure.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.76, wspace=0.22)
        axes = dict(zip(("loss", "acc"), figure.subplots(1, 2)))
        _curve_axes(axes["loss"], "loss (cross-entropy)")
        _curve_axes(axes["acc"], "accuracy (%)")
        axes["loss"].set_ylim(*nice_limits(0, max(finite), LOSS_AXIS_CAP))
        axes["acc"].set_ylim(0, 100)
        self.lines = {}
        for kind, ax in axes.items():
            ax.set_xlim(*epoch_limits(max_epoch))
            for split, colour in (("train", TRAIN_COLOUR), ("test", TEST_COLOUR)):
                (line,) = ax.plot([], [], color=colour, label=split, ms=4, animated=True)
                self.lines[f"{split}_{kind}"] = line
        figure.legend(handles=[self.lines["train_loss"], self.lines["test_loss"]], ncols=2,
                      loc="upper right", bbox_to_anchor=(0.98, 0.9))  # fmt: skip
        self.stencil = Stencil(figure)

    def save(self, run: RunRecord, subtitle: str, path: Path) -> None:
        for key, line in self.lines.items():
            curve = run.curve(key)
            line.set_data(curve.epochs, curve.values * (100.0 if key.endswith("acc") else 1.0))
            line.set_marker("o" if len(curve.epochs) <= MARKERS_UP_TO else "")
        labels = [Label(70, 12, f"{run.name}  (run {run.run_id[:12]})", bold=True, points=11),
                  Label(70, 40, subtitle)]  # fmt: skip
        loss_axes = self.lines["train_loss"].axes
        top = loss_axes.get_ylim()[1]
        for split in ("train", "test"):  # a diverged loss leaves the shared axis: say so
            values = run.curve(f"{split}_loss").values
            if len(values) and not np.nanmax(values) <= top:
                x, y = self.stencil.to_pixels(loss_axes.transAxes, 0.02, 0.97)
                labels.append(Label(x, y + 16 * (split == "test"), f"{split} loss off the scale, "
                                    f"up to {np.nanmax(values):.3g}", colour="#a00000"))  # fmt: skip
        self.stencil.save(path, self.lines.values(), labels)
