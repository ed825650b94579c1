"""The report compare writes into one folder: the table (Markdown and CSV), the charts, the
differences with their uncertainty (stats.py), the study's claims checked (claims.py), and
report.md and report.html showing them all; plus a shorter summary for the compare run's
description (document.py renders the same blocks as Markdown and as HTML)."""

from __future__ import annotations

import csv
import math
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .charts import (
    BAND_NOTE,
    CONFIGURATIONS_PER_PAGE,
    ComparisonFigures,
    ForestFigures,
    PngWriter,
    RunPages,
    factor_colours,
)  # fmt: skip
from .claims import VERDICT_RULE, Verdict, check_claims, image_text, needs_text
from .description import TITLE, describe_compare
from .document import Block, Heading, Image, Link, Table, paragraph, table, to_html, to_markdown
from .paired import RESAMPLES, ImageBootstrap
from .stats import MIN_EFFECT, ComparisonStats, comparison_stats
from .study import (
    FACTORS,
    HEADLINE_NAMES,
    QUIET_FACTORS,
    TABLE_CONFIG_KEYS,
    Comparison,
    Configuration,
    RunRecord,
    find_comparisons,
    group_configurations,
    headline_kind,
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


RunHref = Callable[[RunRecord], str | None]  # where a run opens in the MLflow UI (None: nowhere)
OPTIMISTIC = "max over epochs (optimistic)"  # of test accuracy: chosen on the test set


def percent(mean: float, std: float | None = None) -> str:
    if math.isnan(mean):  # not measured
        return "—"
    return f"{mean * 100:.2f}" + (f" ± {std * 100:.2f}" if std is not None else "")


def seeds_text(seeds: Sequence[object]) -> str:
    """'3 (0, 1, 2)': how many runs, then their seeds."""
    return f"{len(seeds)} ({', '.join(map(str, seeds))})"


def config_line(number: int, configuration: Configuration) -> str:
    """'**2** · resnet18 · gelu · sgd · lr 0.01 · 40 epochs: **91.20 ± 0.31 %** test accuracy,
    3 runs (seeds 0, 1, 2), judged at epoch 37.3 on average; 12.0 s per epoch'."""
    mean, std = configuration.stat("headline")
    epoch = configuration.stat("selected_epoch")[0]
    seconds = configuration.stat("seconds_per_epoch")[0]
    runs = len(configuration.runs)
    return (f"**{number}** · {describe(configuration.config, TABLE_CONFIG_KEYS)}: "
            f"**{percent(mean, std)} %** test accuracy, {runs} run{'s' if runs > 1 else ''} "
            f"(seed{'s' if runs > 1 else ''} {', '.join(map(str, configuration.seeds))}), "
            f"judged at epoch {epoch:g}{' on average' if runs > 1 else ''}; "
            f"{seconds:.1f} s per epoch")  # fmt: skip


def write_table(rows: list[dict[str, object]], folder: Path) -> Table:
    """table.csv (the rows as they are) and table.md (rounded, accuracies in %); returns the
    table as a block."""
    with open(folder / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    config_keys = [k for k in rows[0] if k not in _NUMBER_COLUMNS]
    header = [*config_keys, "parameters", "runs (seeds)", "headline test acc (%)",
              "test acc at best val (%)", "final test acc (%)", f"test acc, {OPTIMISTIC} (%)",
              "selected epoch", "s / epoch"]  # fmt: skip
    cells = []
    for row in rows:
        line = [str(row[k]) for k in config_keys]
        line.append(f"{row['params']:,}" if row["params"] is not None else "?")
        line.append(seeds_text(row["seeds"].split()))
        for stat in ("headline", "test_acc_at_best", "final_test_acc", "max_test_acc"):
            line.append(percent(row[f"{stat}_mean"], row[f"{stat}_std"]))
        line.append(f"{row['selected_epoch_mean']:g}" if row["runs"] == 1
                    else f"{row['selected_epoch_mean']:.1f}")  # fmt: skip
        line.append(f"{row['seconds_per_epoch_mean']:.1f}")
        cells.append(line)
    block = table(header, cells)
    (folder / "table.md").write_text(to_markdown([block]))
    return block


_NUMBER_COLUMNS = {"params", "seeds", "runs", "headline", "selected_epoch_mean",
                   "seconds_per_epoch_mean", "run_ids",
                   *(f"{s}_{m}" for s in ("headline", "test_acc_at_best", "final_test_acc",
                                          "max_test_acc") for m in ("mean", "std"))}  # fmt: skip


def write_differences(sections: Mapping[str, list[Section]], folder: Path) -> None:
    """differences.csv: every difference of every comparison, unrounded (fractions)."""
    with open(folder / "differences.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["factor", "comparison", "value", "reference", "n_value", "n_reference",
                         "mean", "ci_low", "ci_high", "p", "p_holm", "test", "floor", "n_test",
                         "image_test", "image_n", "image_mean", "image_ci_low", "image_ci_high",
                         "mcnemar_p", "mcnemar_p_holm", "discordant_value", "discordant_reference",
                         "resamples", "p_improvement", "p_improvement_low", "p_improvement_high",
                         "seeds_needed", "seeds_needed_for", "seed_spread"])  # fmt: skip
        for factor, factor_sections in sections.items():
            for s in factor_sections:
                for d in s.stats.differences:
                    e, i = d.image, d.improvement
                    floor = None if s.stats.image_level else s.stats.floor
                    writer.writerow(_blank(
                        factor, s.context, d.value, d.reference, d.n_value, d.n_reference,
                        d.mean, d.low, d.high, d.p, d.p_holm, d.test, floor, s.stats.n_test,
                        *((e.test, e.n_images, e.mean, e.low, e.high, e.p, e.p_holm,
                           *(e.discordant or (None, None)), e.resamples) if e else [None] * 10),
                        *((i.p, i.low, i.high) if i else (None,) * 3),
                        None if d.decided else d.seeds_needed,
                        None if d.decided else d.target, d.spread,
                    ))  # fmt: skip


def _blank(*values: object) -> list[object]:
    """A CSV row: None (not measured, not applicable) as an empty cell."""
    return ["" if v is None else v for v in values]


@dataclass(frozen=True)
class Report:
    """What write_report made: counts for the caller to log, and the run description."""

    counts: dict[str, int]
    summary: str  # Markdown: the run's description (description.py)


@dataclass(frozen=True)
class Section:
    """One comparison in the report: its context, numbers and chart files."""

    comparison: Comparison
    context: str
    stats: ComparisonStats
    chart: str
    forest: str


def write_report(
    runs: list[RunRecord], folder: Path, selection: str, written: Written = lambda path: None,
    file_href: RunHref = lambda run: None, ui_href: RunHref = lambda run: None,
    artifact_href: Callable[[str], str | None] = lambda path: None,
    min_effect: float = MIN_EFFECT,
) -> Report:  # fmt: skip
    """Everything compare writes, into `folder`: comparisons/*.png, runs/*.png, table.md,
    table.csv, differences.csv, report.md and report.html, each handed to `written` once whole
    (compare uploads them while the rest is drawn). Runs link to `file_href` in the files and to
    `ui_href` in the summary (the MLflow UI's own links work there); `artifact_href` is where a
    logged file opens from the MLflow UI (whose Markdown views resolve a relative link against
    the UI's root, not the file's folder). `min_effect`: the smallest accuracy difference of
    interest (a fraction), for the seeds an undecided difference needs."""
    configurations = group_configurations(runs)
    images = ImageBootstrap()  # the image resamples, drawn once for every difference
    # Titles name the factors held fixed, lr and epochs, and whatever else differs in the study.
    context_keys = [*TABLE_CONFIG_KEYS, *varying_keys(configurations)]
    config_table = write_table(table_rows(configurations), folder)
    written(folder / "table.csv")
    written(folder / "table.md")
    # One process draws (a thread encodes). measured: two (half the figures drawn in a spawned
    # process) were slower on this shared 2-core machine, 6.7-6.9 s against 5.9-6.1 s for the
    # factorial report of bench/bench_compare.py at load 4.
    with PngWriter(written) as png:  # report.html embeds the figures: they are whole after it
        sections = _draw_comparisons(configurations, context_keys, folder, png, images,
                                     min_effect)  # fmt: skip
        write_differences(sections, folder)
        written(folder / "differences.csv")
        verdicts = check_claims(configurations, images, min_effect)
        run_pages = _draw_runs(configurations, context_keys, folder, png)
    contents = Contents(
        intro=_intro(runs, configurations, selection, min_effect), config_table=config_table,
        sections=sections, verdicts=verdicts, runs_table=_runs_table(configurations, file_href),
        run_pages=run_pages,
    )  # fmt: skip
    _write_documents(contents, context_keys, folder, artifact_href, written)
    counts = {"runs": len(runs), "configurations": len(configurations),
              "comparisons": sum(len(s) for s in sections.values())}  # fmt: skip
    summary = describe_compare(contents.intro[:2], configurations, sections, contents.verdicts,
                               ui_href, artifact_href, config_line)  # fmt: skip
    return Report(counts, summary)


@dataclass(frozen=True)
class Contents:
    """What the report shows, made once for report.md and report.html."""

    intro: list[Block]
    config_table: Table
    sections: dict[str, list[Section]]  # by factor
    verdicts: list[Verdict]
    runs_table: Table
    run_pages: list[Block]


# Only in report.md: report.html is where the images show in the UI.
POINTER = paragraph(
    "In the MLflow UI, open report.html: this file's images show on disk and on GitHub, not in "
    "the UI's Markdown viewer."
)


def _write_documents(
    contents: Contents, context_keys: list[str], folder: Path,
    artifact_href: Callable[[str], str | None], written: Written,
) -> None:  # fmt: skip
    """report.md and report.html. They differ in two blocks: the pointer to report.html, and
    links to the CSV files from the UI (neither resolves from report.html's blob: page)."""
    markdown = _blocks(contents, context_keys, [POINTER], _files_paragraph(artifact_href))
    (folder / "report.md").write_text(to_markdown(markdown))
    written(folder / "report.md")
    html = _blocks(contents, context_keys, [], _files_paragraph(lambda path: None))
    (folder / "report.html").write_text(to_html(html, folder, TITLE))
    written(folder / "report.html")


def _blocks(contents: Contents, context_keys: list[str], pointer: list[Block],
            files: Block) -> list[Block]:  # fmt: skip
    return [
        Heading(1, TITLE), *contents.intro, *pointer,
        Heading(2, "Configurations"), contents.config_table, files,
        *(b for factor in FACTORS for b in _factor_blocks(factor, contents.sections[factor])),
        Heading(2, "The study's claims"), *_claims_blocks(contents.verdicts, context_keys),
        Heading(2, "Compared runs"), contents.runs_table,
        Heading(2, "Runs"), *contents.run_pages,
    ]  # fmt: skip


def _files_paragraph(artifact_href: Callable[[str], str | None]) -> Block:
    """Links to the CSV files: next to report.md on disk, and as the MLflow UI serves them."""
    parts: list = []
    for lead, name in (("As CSV, unrounded: ", "table.csv"), ("; every difference below: ",
                                                              "differences.csv")):  # fmt: skip
        parts += [lead, Link(name, name)]
        if href := artifact_href(name):
            parts += [" (", Link("from the MLflow UI", href), ")"]
    return paragraph(*parts, ".")


def _intro(runs: list[RunRecord], configurations: list[Configuration], selection: str,
           min_effect: float):  # fmt: skip
    kind = headline_kind(runs)
    with_images = sum(bool(r.outcomes) for r in runs)
    return [
        paragraph(f"{selection}: {len(runs)} training runs in {len(configurations)} "
                  "configurations."),
        paragraph(f"Headline accuracy: {HEADLINE_NAMES[kind]}. The test set never chooses an "
                  f"epoch; the {OPTIMISTIC} is shown in the table only, labelled so."),
        paragraph(f"Differences: mean over seeds (value − reference) in percentage points, 95% "
                  "CI and p-value from a paired t-test by seed where both sides ran the same "
                  "seeds, else Welch's t-test; p-values Holm-corrected within each comparison; "
                  "with one run on a side, no interval (n = 1). In the curves, "
                  f"{BAND_NOTE}."),
        paragraph(f"Image-level evidence: {with_images} of {len(runs)} runs logged their outcome "
                  "on each test image (at the checkpoint the headline is judged at). Where every "
                  "run of both sides did, on the same test set (same digest), a difference is "
                  "also judged image by image: McNemar's exact test on the discordant images "
                  "with one run a side (Holm-corrected within the comparison); with more runs, "
                  f"a two-level paired bootstrap (seeds, then images; {RESAMPLES} resamples, "
                  "seeded) 95% CI of the accuracy difference. Other differences rest on the "
                  "runs' accuracies alone, beside the test-set sampling floor of one accuracy. "
                  "P(A>B): the probability that a run of the value beats a run of the reference, "
                  "over every pair of runs (ties half), with a 95% percentile bootstrap interval "
                  f"({RESAMPLES} resamples; none where every pair agrees, as every resample "
                  "would). Seeds needed (undecided differences): per side, for "
                  "a t-test at α = 0.05 to detect the observed difference or the smallest "
                  f"difference of interest ({min_effect * 100:g} pp, --min-effect), whichever is "
                  "larger, with 80% power, at the observed seed-to-seed spread. The reference "
                  "of a comparison is the study's baseline value; where it did not run, the "
                  "configuration with the best mean validation accuracy, else none: the test "
                  "set chooses nothing."),
    ]  # fmt: skip


def _draw_comparisons(
    configurations: list[Configuration], context_keys: list[str], folder: Path, png: PngWriter,
    images: ImageBootstrap, min_effect: float,
) -> dict[str, list[Section]]:  # fmt: skip
    """Every comparison's curves and forest plot, by factor."""
    (folder / "comparisons").mkdir()
    colours = factor_colours(configurations)
    return {
        factor: _draw_factor(factor, configurations, colours[factor], context_keys, folder,
                             png, images, min_effect)
        for factor in FACTORS
    }  # fmt: skip


def _draw_factor(
    factor: str, configurations: list[Configuration], colours: dict[str, str],
    context_keys: list[str], folder: Path, png: PngWriter, images: ImageBootstrap,
    min_effect: float,
) -> list[Section]:  # fmt: skip
    """The curves and forest plot of each of one factor's comparisons."""
    comparisons = find_comparisons(configurations, factor)
    if not comparisons:
        return []
    figures = ComparisonFigures(factor, colours, png)
    forests = ForestFigures(max(len(c.configurations) - 1 for c in comparisons), png)
    sections = []
    for comparison in comparisons:
        keys = [k for k in context_keys if k != factor and not (comparison.tuned and k == "lr")]
        context = describe(comparison.fixed, keys)
        if comparison.qualifier:
            context += f" · {comparison.qualifier}"
        name = f"comparisons/{factor}__{slug(context)}"
        stats = comparison_stats(comparison, images, min_effect)
        figures.save(comparison, f"{factor.capitalize()} comparison: {context}",
                     folder / f"{name}.png")  # fmt: skip
        forest = ""
        if stats.reference is not None:
            forest = f"{name}__differences.png"
            forests.save(stats, f"{factor.capitalize()}: difference from "
                         f"{comparison.label(stats.reference)} · {context}", colours,
                         folder / forest)  # fmt: skip
        sections.append(Section(comparison, context, stats, f"{name}.png", forest))
    return sections


def _differences_table(stats: ComparisonStats) -> Table:
    rows = []
    for d in stats.differences:
        interval = "—" if d.low is None else f"[{d.low * 100:.2f}, {d.high * 100:.2f}]"
        i = d.improvement
        improvement = "—" if i is None else f"{i.p:.2f}" + (
            "" if i.low is None else f" [{i.low:.2f}, {i.high:.2f}]")  # fmt: skip
        rows.append((
            f"{d.value} − {d.reference}", d.n, f"{d.mean * 100:+.2f}", interval,
            "—" if d.p is None else f"{d.p:.3g}", "—" if d.p_holm is None else f"{d.p_holm:.3g}",
            d.test, image_text(d.image, 100.0, "pp") if d.image else "— (no per-image outcomes)",
            improvement, "decided" if d.decided else needs_text(d, 100.0, "pp"),
        ))  # fmt: skip
    return table(("difference", "n", "mean (pp)", "95% CI (pp)", "p", "p (Holm)", "test",
                  "on the same images", "P(A>B) [95% CI]", "seeds needed"), rows)  # fmt: skip


def _floor_text(stats: ComparisonStats) -> str:
    if stats.image_level:
        return ("Every difference above is paired on the same test images, so the sampling "
                "floor of one accuracy does not apply to it.")  # fmt: skip
    if stats.floor is None:
        return "Test-set sampling floor: not known (the runs did not log test_images)."
    return (
        f"Test-set sampling floor: ±{stats.floor * 100:.2f} pp at the reference's accuracy "
        f"(±1.96·√(p(1−p)/n_test), n_test = {stats.n_test}): one accuracy measured on that test "
        "set is uncertain by this much, whatever the seeds."
    )


def _tuned_text(comparison: Comparison) -> str:
    lrs = ", ".join(f"{c.config[comparison.factor]} lr {c.config.get('lr', '?')}"
                    for c in comparison.configurations)  # fmt: skip
    tunes = sorted({r.tuned_from for c in comparison.configurations for r in c.runs})
    return f"At tuned learning rates ({', '.join(tunes)}): {lrs}."


def _factor_blocks(factor: str, sections: list[Section]) -> list[Block]:
    blocks: list[Block] = [Heading(2, f"{factor.capitalize()} comparisons")]
    if not sections:
        if factor in QUIET_FACTORS:
            return []
        return [*blocks, paragraph(f"No two configurations differ only in the {factor}.")]
    for s in sections:
        blocks += [Heading(3, s.context), Image(s.chart, f"{factor} comparison, {s.context}")]
        if s.comparison.tuned:
            blocks.append(paragraph(_tuned_text(s.comparison)))
        if s.stats.reference is None:
            blocks.append(paragraph(f"No differences: reference {s.stats.chosen}."))
            continue
        if not s.stats.chosen.startswith("the study's baseline"):
            blocks.append(paragraph(f"Reference: {s.stats.chosen}."))
        blocks += [
            paragraph(f"Against {s.comparison.label(s.stats.reference)}, headline test accuracy:"),
            _differences_table(s.stats), paragraph(_floor_text(s.stats)),
            Image(s.forest, f"{factor} differences, {s.context}"),
        ]  # fmt: skip
    return blocks


def _claims_blocks(verdicts: list[Verdict], context_keys: list[str]) -> list[Block]:
    rows = []
    for v in verdicts:
        where = describe(v.comparison.fixed, context_keys) if v.comparison else ""
        if v.comparison and v.comparison.qualifier:
            where += f" · {v.comparison.qualifier}"
        rows.append((f"({v.letter}) {v.claim}", v.verdict.upper(), v.rule, "; ".join(v.evidence),
                     where))  # fmt: skip
    measures = (
        "Measures: accuracy = the headline test accuracy; final accuracy = test accuracy at the "
        "last epoch; epochs to 90% = the first epoch whose test accuracy reaches 90% of the run's "
        "final (fewer: faster convergence); fluctuation = the standard deviation of epoch-to-epoch "
        "changes of test accuracy over the second half of training (smaller: smoother, more "
        "stable); seconds per epoch = mean epoch wall time. Each claim is checked within one "
        "comparison: the one holding the values it needs with the most runs."
    )
    return [paragraph(measures), paragraph(VERDICT_RULE),
            table(("claim", "verdict", "rule", "numbers", "comparison"), rows)]  # fmt: skip


def _runs_table(configurations: list[Configuration], href: RunHref,
                limit: int | None = None) -> Table:  # fmt: skip
    """A row per run: its name (a link where `href` gives one) and id; `limit` rows at most
    (the description's room), then a line saying how many were left out."""
    rows = []
    for number, configuration in enumerate(configurations, 1):
        for run in configuration.runs:
            link = href(run)
            rows.append((Link(run.name, link) if link else run.name, run.run_id, str(number),
                         str(run.seed), percent(run.headline), str(run.selected_epoch)))  # fmt: skip
    if limit is not None and len(rows) > limit:
        rows = [*rows[:limit], (f"… and {len(rows) - limit} more: see report.html", "", "", "",
                                "", "")]  # fmt: skip
    header = ("run", "run id", "configuration (table row)", "seed", "headline test acc (%)",
              "judged at epoch")  # fmt: skip
    return table(header, rows)


def _draw_runs(
    configurations: list[Configuration], context_keys: list[str], folder: Path,
    png: PngWriter,
) -> list[Block]:  # fmt: skip
    """Every run's curves, on pages of a few configurations each, in table order."""
    (folder / "runs").mkdir()
    columns = [(_runs_caption(number, c, context_keys), c)
               for number, c in enumerate(configurations, 1)]  # fmt: skip
    blocks: list[Block] = [paragraph(
        "Every run's accuracy (above) and loss (below) against epoch, a column per configuration "
        "(numbered as in the table), a thin line per run and split; the dot marks each run's "
        "headline test accuracy, at the epoch it is judged by."
    )]  # fmt: skip
    pages = RunPages(png)
    for start in range(0, len(columns), CONFIGURATIONS_PER_PAGE):
        page = columns[start : start + CONFIGURATIONS_PER_PAGE]
        first, last = start + 1, start + len(page)
        name = f"runs/configurations-{first}-{last}.png"
        pages.save(page, folder / name)
        blocks.append(Image(name, f"the runs of configurations {first} to {last}"))
    return blocks


def _runs_caption(number: int, configuration: Configuration, context_keys: list[str],
                  width: int = 34) -> str:  # fmt: skip
    """A runs page's column title: '2 · resnet18 · gelu · sgd', then 'lr 0.01 · 40 epochs ·
    seeds 0–3' on the next line; lines of about `width` characters, broken between parts."""
    seeds = configuration.seeds
    consecutive = len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    listed = f"{seeds[0]}–{seeds[-1]}" if consecutive else ", ".join(str(s) for s in seeds)
    parts = [str(number), *describe(configuration.config, context_keys).split(" · "),
             f"seed{'s' if len(seeds) > 1 else ''} {listed}"]  # fmt: skip
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += f" · {part}"
        else:
            lines.append(part)
    return "\n".join(lines)
