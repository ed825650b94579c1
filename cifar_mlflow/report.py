"""The report compare writes: the table (Markdown and CSV), the charts, and report.md showing
them all, into one folder."""

from __future__ import annotations

import csv
from pathlib import Path

from .charts import BAND_NOTE, ComparisonFigures, RunFigures, describe, factor_colours, slug
from .study import (
    FACTORS,
    TABLE_CONFIG_KEYS,
    RunRecord,
    find_comparisons,
    group_configurations,
    table_rows,
    varying_keys,
)  # fmt: skip


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
