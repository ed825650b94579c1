"""The report compare writes: the table (Markdown and CSV), the charts, and report.md showing
them all, into one folder."""

from __future__ import annotations

import csv
import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from .charts import BAND_NOTE, ComparisonFigures, RunFigures, factor_colours
from .study import (
    FACTORS,
    TABLE_CONFIG_KEYS,
    Configuration,
    RunRecord,
    find_comparisons,
    group_configurations,
    table_rows,
    varying_keys,
)  # fmt: skip

Written = Callable[[Path], None]  # told of each file once it is whole


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


def slug(text: str, limit: int = 100) -> str:
    """A file name for `text`; a long one is cut and keeps a hash of the whole."""
    name = re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")
    return name if len(name) <= limit else f"{name[: limit - 9]}-{zlib.crc32(name.encode()):08x}"


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


def write_report(
    runs: list[RunRecord], folder: Path, selection: str, written: Written = lambda path: None
) -> dict[str, int]:
    """Everything compare writes, into `folder`: comparisons/*.png, runs/*.png, table.md,
    table.csv and report.md embedding them, each handed to `written` once whole (compare uploads
    them while the rest is drawn). Returns counts for the caller to log."""
    configurations = group_configurations(runs)
    # Titles name the factors held fixed, lr and epochs, and whatever else differs in the study.
    context_keys = [*TABLE_CONFIG_KEYS, *varying_keys(configurations)]
    table = write_table(table_rows(configurations), folder)
    written(folder / "table.csv")
    written(folder / "table.md")
    (folder / "comparisons").mkdir()
    (folder / "runs").mkdir()
    colours = factor_colours(configurations)
    # Two processes drawing at once were no faster on this shared 2-core machine (measured:
    # 6.3-7.9 s against 6.3-7.0 s for the 100-run factorial report at load 6-7), so one draws.
    sections = [
        _draw_comparisons(factor, configurations, colours[factor], context_keys, folder, written)
        for factor in FACTORS
    ]
    report = [
        "# CIFAR-10 ablation: comparison", "",
        f"{selection}: {len(runs)} training runs in {len(configurations)} configurations.",
        f"In the charts, {BAND_NOTE}.", "", "## Configurations", "", table,
        "As CSV, unrounded: [table.csv](table.csv).", "",
        *(line for section in sections for line in section),
        "## Runs", "", *_draw_runs(configurations, context_keys, folder, written),
    ]  # fmt: skip
    (folder / "report.md").write_text("\n".join(report))
    written(folder / "report.md")
    charted = sum(len(find_comparisons(configurations, factor)) for factor in FACTORS)
    return {"runs": len(runs), "configurations": len(configurations), "comparisons": charted}


def _draw_comparisons(
    factor: str, configurations: list[Configuration], colours: dict[str, str],
    context_keys: list[str], folder: Path, written: Written,
) -> list[str]:  # fmt: skip
    """The charts of one factor's comparisons; returns their section of report.md."""
    comparisons = find_comparisons(configurations, factor)
    lines = [f"## {factor.capitalize()} comparisons", ""]
    if not comparisons:
        lines += [f"No two configurations differ only in the {factor}.", ""]
    figures = ComparisonFigures(factor, colours)
    for comparison in comparisons:
        context = describe(comparison.fixed, [k for k in context_keys if k != factor])
        name = f"comparisons/{factor}__{slug(context)}.png"
        figures.save(comparison, f"{factor.capitalize()} comparison: {context}", folder / name)
        written(folder / name)
        lines += [f"### {context}", "", f"![{factor} comparison, {context}]({name})", ""]
    return lines


def _draw_runs(
    configurations: list[Configuration], context_keys: list[str], folder: Path, written: Written
) -> list[str]:
    """Each run's figure, in table order; returns the report.md lines showing them."""
    figures = RunFigures([run for c in configurations for run in c.runs])
    lines = []
    for configuration in configurations:
        caption = describe(configuration.config, context_keys)
        for run in configuration.runs:
            name = f"runs/{slug(run.name)}__{run.run_id[:12]}.png"
            figures.save(run, f"{caption} · seed {run.seed}", folder / name)
            written(folder / name)
            lines += [f"![{run.name}]({name})", ""]
    return lines
