"""What compare draws and writes: comparison charts, one figure per run, the table, report.md.

Drawing axes (ticks, tick labels, grid) is most of matplotlib's time, ~50 ms per axes on this
2-core machine, and a report has a hundred figures. So each kind of figure is laid out once as a
`Stencil`: its frame (axes, ticks, labels) is drawn once per set of axis limits, and each chart
draws only its own lines, bands, bars and texts onto a copy of that frame. Axis limits are
rounded to tick values, so charts of one study share a few frames. Measured in
docs/compare-benchmark.md: 100 run figures and 26 comparison charts in ~N s instead of ~M s.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from .study import (
    FACTOR_VALUES, FACTORS, TABLE_CONFIG_KEYS, Comparison, Configuration, RunRecord,
    find_comparisons, group_configurations, seed_band, table_rows, varying_keys,
)  # fmt: skip

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip  (matplotlib's tab10)
TRAIN_COLOUR, TEST_COLOUR = PALETTE[0], PALETTE[1]
DPI = 100
PNG_OPTIONS = {"compress_level": 1}  # zlib level 1, not 6: measured ~3x faster, files ~1.5x larger
TICKS = 6  # at most, per axis
MARKERS_UP_TO = 10  # epochs: with few points a line needs markers (one epoch is a lone point)
# Cross-entropy of a uniform guess over 10 classes is ln 10 = 2.30; a run far above it has
# diverged, so the shared loss axis of the run figures stops at twice that.
LOSS_AXIS_CAP = 2 * math.log(10)
BAND_NOTE = "lines: mean over seeds; shaded: min to max over seeds; n: runs"
CURVES = (("test_acc", "test accuracy (%)", 100.0), ("train_loss", "train loss (cross-entropy)", 1.0))
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
            else f"{value} epochs" if key == "epochs"
            else f"{key.replace('_', ' ')} {value}"
        )  # fmt: skip
    return " · ".join(parts)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")


def nice_limits(low: float, high: float) -> tuple[float, float]:
    """The outermost of at most TICKS round tick values spanning [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return 0.0, 1.0
    ticks = MaxNLocator(TICKS).tick_values(low, high)
    return float(ticks[0]), float(ticks[-1])


def epoch_limits(max_epoch: int) -> tuple[float, float]:
    pad = max(0.5, max_epoch * 0.02)
    return 1 - pad, max_epoch + pad


class Stencil:
    """A figure whose frame is drawn once per set of axis limits (the cache key), and whose
    charts draw only the artists added since `begin()`, which `save()` then removes again."""

    def __init__(self, figure: Figure):
        self.figure = figure
        self.canvas = FigureCanvasAgg(figure)
        self.frames: dict[tuple, object] = {}
        self.before: set[int] = set()

    def _artists(self) -> list[Artist]:
        return [*self.figure.get_children(), *(a for ax in self.figure.axes for a in ax.get_children())]

    def begin(self) -> None:
        self.before = {id(a) for a in self._artists()}

    def save(self, path: Path) -> None:
        new = [a for a in self._artists() if id(a) not in self.before]
        for artist in new:
            artist.set_animated(True)  # left out of the frame
        key = tuple((ax.get_xlim(), ax.get_ylim()) for ax in self.figure.axes)
        if key not in self.frames:
            self.canvas.draw()
            self.frames[key] = self.canvas.copy_from_bbox(self.figure.bbox)
        self.canvas.restore_region(self.frames[key])
        for artist in sorted(new, key=lambda a: a.get_zorder()):
            (artist.axes or self.figure).draw_artist(artist)
        image = Image.fromarray(np.asarray(self.canvas.buffer_rgba())).convert("RGB")
        image.save(path, **PNG_OPTIONS)
        for ax in self.figure.axes:
            for container in list(ax.containers):  # bars with their error bars
                container.remove()
        for artist in self._artists():
            if id(artist) not in self.before:
                artist.remove()


def _curve_axes(ax, ylabel: str) -> None:
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(TICKS, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(TICKS))


class ComparisonFigures:
    """Test accuracy and train loss against epoch, one line (mean, min-max band) per value of the
    factor; the model comparison adds bars of size, speed and best accuracy."""

    def __init__(self, factor: str, colours: Mapping[str, str]):
        self.factor, self.colours = factor, colours
        self.with_bars = factor == "model"
        height = 8.0 if self.with_bars else 4.6
        figure = Figure(figsize=(11, height), dpi=DPI)
        # Margins in inches; matplotlib's constrained layout would double the drawing time.
        grid = figure.add_gridspec(2 if self.with_bars else 1, 6, left=0.07, right=0.98,
                                   top=1 - 0.6 / height, bottom=0.8 / height, hspace=0.35,
                                   wspace=1.4)  # fmt: skip
        self.curve_axes = [figure.add_subplot(grid[0, :3]), figure.add_subplot(grid[0, 3:])]
        for ax, (_, ylabel, _) in zip(self.curve_axes, CURVES):
            _curve_axes(ax, ylabel)
        self.bar_axes = []
        for i, (_, title, _, _) in enumerate(BARS if self.with_bars else ()):
            ax = figure.add_subplot(grid[1, 2 * i : 2 * i + 2])
            ax.set_title(title, fontsize="medium")
            # Bars are drawn relative to the tallest and carry their values, so the frame needs
            # no y axis and is the same for every comparison.
            ax.set_yticks([])
            ax.set_ylim(0, 1.25)
            for side in ("left", "right", "top"):
                ax.spines[side].set_visible(False)
            self.bar_axes.append(ax)
        self.stencil = Stencil(figure)

    def save(self, comparison: Comparison, title: str, path: Path) -> None:
        self.stencil.begin()
        configurations = comparison.configurations
        for ax, (key, _, scale) in zip(self.curve_axes, CURVES):
            low, high = math.inf, -math.inf
            for configuration in configurations:
                band = seed_band([r.curve(key) for r in configuration.runs])
                colour = self.colours[configuration.config[self.factor]]
                marker = "o" if len(band.epochs) <= MARKERS_UP_TO else None
                label = f"{comparison.label(configuration)} (n={band.n})"
                ax.plot(band.epochs, band.mean * scale, color=colour, marker=marker, ms=4,
                        label=label)  # fmt: skip
                if band.n > 1:
                    ax.fill_between(band.epochs, band.low * scale, band.high * scale,
                                    color=colour, alpha=0.2, linewidth=0)  # fmt: skip
                low, high = min(low, np.nanmin(band.low)), max(high, np.nanmax(band.high))
            ax.set_ylim(*nice_limits(low * scale, high * scale))
            ax.set_xlim(*epoch_limits(max(int(c.runs[0].curve(key).epochs.max())
                                          for c in configurations)))  # fmt: skip
        self.curve_axes[0].legend(title=self.factor, fontsize="small", loc="lower right")
        for ax, bar in zip(self.bar_axes, BARS):
            self._bars(ax, comparison, *bar)
        figure = self.stencil.figure
        figure.text(0.5, 1 - 0.15 / figure.get_figheight(), title, ha="center", va="top",
                    fontweight="bold", fontsize="large")  # fmt: skip
        if any(len(c.runs) > 1 for c in configurations):
            figure.text(0.5, 0.01, BAND_NOTE, ha="center", va="bottom", fontsize="small",
                        color="#555555")  # fmt: skip
        self.stencil.save(path)

    def _bars(self, ax, comparison: Comparison, stat: str, title: str, scale: float,
              fmt: str) -> None:  # fmt: skip
        configurations = comparison.configurations
        if stat == "model_params":
            stats = [((c.model_params or 0) * scale, None) for c in configurations]
        else:
            stats = [(mean * scale, std and std * scale) for mean, std in
                     (c.stat(stat) for c in configurations)]  # fmt: skip
        tallest = max((mean + (std or 0) for mean, std in stats), default=0) or 1.0
        x = np.arange(len(configurations))
        ax.set_xlim(-0.6, len(configurations) - 0.4)
        colours = [self.colours[c.config[self.factor]] for c in configurations]
        errors = [(std or 0) / tallest for _, std in stats]
        ax.bar(x, [mean / tallest for mean, _ in stats], width=0.7, color=colours,
               yerr=errors if any(errors) else None, capsize=4)  # fmt: skip
        for i, ((mean, std), configuration) in enumerate(zip(stats, configurations)):
            ax.text(i, (mean + (std or 0)) / tallest + 0.03, fmt.format(mean), ha="center",
                    va="bottom")  # fmt: skip
            ax.text(i, -0.04, comparison.label(configuration), ha="center", va="top",
                    transform=ax.get_xaxis_transform())  # fmt: skip


class RunFigures:
    """Each run's loss and accuracy against epoch, on axes shared by all runs of the report, so
    flipping through the figures compares the runs."""

    def __init__(self, runs: list[RunRecord]):
        max_epoch = max(int(r.curve("test_acc").epochs.max()) for r in runs)
        losses = [v for r in runs for k in ("train_loss", "test_loss") for v in r.curve(k).values]
        finite = [v for v in losses if math.isfinite(v)] or [1.0]
        figure = Figure(figsize=(10, 4.2), dpi=DPI)
        figure.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.76, wspace=0.22)
        self.axes = dict(zip(("loss", "acc"), figure.subplots(1, 2)))
        _curve_axes(self.axes["loss"], "loss (cross-entropy)")
        _curve_axes(self.axes["acc"], "accuracy (%)")
        self.axes["loss"].set_ylim(0, nice_limits(0, min(max(finite), LOSS_AXIS_CAP))[1])
        self.axes["acc"].set_ylim(0, 100)
        for ax in self.axes.values():
            ax.set_xlim(*epoch_limits(max_epoch))
        handles = [self.axes["loss"].plot([], [], color=c)[0] for c in (TRAIN_COLOUR, TEST_COLOUR)]
        figure.legend(handles, ["train", "test"], loc="upper right", ncols=2,
                      bbox_to_anchor=(0.98, 0.9))  # fmt: skip
        self.stencil = Stencil(figure)

    def save(self, run: RunRecord, subtitle: str, path: Path) -> None:
        self.stencil.begin()
        for kind, scale in (("loss", 1.0), ("acc", 100.0)):
            for split, colour in (("train", TRAIN_COLOUR), ("test", TEST_COLOUR)):
                curve = run.curve(f"{split}_{kind}")
                marker = "o" if len(curve.epochs) <= MARKERS_UP_TO else None
                self.axes[kind].plot(curve.epochs, curve.values * scale, color=colour,
                                     marker=marker, ms=4)  # fmt: skip
        figure = self.stencil.figure
        figure.text(0.07, 0.96, f"{run.name}  (run {run.run_id[:12]})", va="top",
                    fontweight="bold")  # fmt: skip
        figure.text(0.07, 0.89, subtitle, va="top")
        self.stencil.save(path)


def write_table(rows: list[dict[str, object]], folder: Path) -> str:
    """table.csv (the rows as they are) and table.md (rounded, accuracies in %); returns the
    Markdown."""
    with open(folder / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    config_keys = [k for k in rows[0] if k not in _NUMBER_COLUMNS]
    header = [*config_keys, "parameters", "seeds", "best test acc (%)", "final test acc (%)",
              "epoch of best", "s / epoch"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row[k]) for k in config_keys]
        cells.append(f"{row['params']:,}" if row["params"] is not None else "?")
        cells.append(row["seeds"].replace(" ", ", "))
        for stat in ("best_test_acc", "final_test_acc"):
            mean, std = row[f"{stat}_mean"], row[f"{stat}_std"]
            cells.append(f"{mean * 100:.2f}" + (f" ± {std * 100:.2f}" if std is not None else ""))
        cells.append(f"{row['best_epoch_mean']:g}" if row["runs"] == 1
                     else f"{row['best_epoch_mean']:.1f}")  # fmt: skip
        cells.append(f"{row['seconds_per_epoch_mean']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    markdown = "\n".join(lines) + "\n"
    (folder / "table.md").write_text(markdown)
    return markdown


_NUMBER_COLUMNS = {"params", "seeds", "runs", "best_test_acc_mean", "best_test_acc_std",
                   "final_test_acc_mean", "final_test_acc_std", "best_epoch_mean",
                   "seconds_per_epoch_mean", "run_ids"}  # fmt: skip


def write_report(runs: list[RunRecord], folder: Path, selection: str) -> dict[str, int]:
    """Everything compare writes, into `folder`: comparisons/*.png, runs/*.png, table.md,
    table.csv and report.md embedding them. Returns counts for the caller to log."""
    configurations = group_configurations(runs)
    colours = factor_colours(configurations)
    # Titles name the factors held fixed, lr and epochs, and whatever else differs in the study.
    context_keys = [*TABLE_CONFIG_KEYS, *varying_keys(configurations)]
    table = write_table(table_rows(configurations), folder)
    report = [
        "# CIFAR-10 ablation: comparison", "",
        f"{selection}: {len(runs)} training runs in {len(configurations)} configurations.",
        f"In the charts, {BAND_NOTE}.", "", "## Configurations", "", table,
        "As CSV, unrounded: [table.csv](table.csv).", "",
    ]  # fmt: skip
    (folder / "comparisons").mkdir()
    count = 0
    for factor in FACTORS:
        comparisons = find_comparisons(configurations, factor)
        figures = ComparisonFigures(factor, colours[factor])
        report += [f"## {factor.capitalize()} comparisons", ""]
        if not comparisons:
            report += [f"No two configurations differ only in the {factor}.", ""]
        for comparison in comparisons:
            context = describe(comparison.fixed, [k for k in context_keys if k != factor])
            name = f"comparisons/{factor}__{slug(context)}.png"
            figures.save(comparison, f"{factor.capitalize()} comparison: {context}", folder / name)
            report += [f"### {context}", "", f"![{factor} comparison, {context}]({name})", ""]
            count += 1
    (folder / "runs").mkdir()
    report += ["## Runs", ""]
    figures = RunFigures(runs)
    for configuration in configurations:
        subtitle = describe(configuration.config, context_keys)
        for run in configuration.runs:
            name = f"runs/{slug(run.name)}__{run.run_id[:12]}.png"
            figures.save(run, f"{subtitle} · seed {run.seed}", folder / name)
            report += [f"![{run.name}]({name})", ""]
    (folder / "report.md").write_text("\n".join(report))
    return {"runs": len(runs), "configurations": len(configurations), "comparisons": count}
