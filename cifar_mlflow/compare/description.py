"""The compare run's description: the report in brief, as the MLflow UI shows it on the run's
Overview page.

The UI's Markdown view draws tables without borders or padding, so neighbouring values run
together ("0.01 4" for lr 0.01 and 4 epochs): the description has lists, one statement per
line, and no table. Its links are routes the UI resolves (a run's page, the run's artifact
viewer); a file name relative to the report (table.csv), which works on disk, would open
nothing there. MLflow keeps a description of at most DESCRIPTION_LIMIT characters: for a large
study the differences, then the runs, give way, and report.html keeps everything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from .claims import describe_difference
from .document import Block, Heading, Link, items, paragraph, to_markdown
from .study import FACTORS, Configuration, RunRecord

if TYPE_CHECKING:
    from .claims import Verdict
    from .report import Section

# mlflow.note.content is a tag: MLflow refuses values over 8000 characters (MAX_TAG_VAL_LENGTH).
DESCRIPTION_LIMIT = 8000
TITLE = "CIFAR-10 ablation: comparison"


def describe_compare(intro: Sequence[Block], configurations: Sequence[Configuration],
                     sections: Mapping[str, Sequence[Section]], verdicts: Sequence[Verdict],
                     run_href: Callable[[RunRecord], str | None],
                     artifact_href: Callable[[str], str | None],
                     config_line: Callable[[int, Configuration], str]) -> str:  # fmt: skip
    """The description in Markdown, cut to fit: `config_line(number, configuration)` says what
    each configuration is and how it did."""
    head = [Heading(3, TITLE), *intro, _files(artifact_href), Heading(4, "Configurations"),
            items(*(config_line(n, c) for n, c in enumerate(configurations, 1)))]  # fmt: skip
    differences = _differences(sections)
    claims = [Heading(4, "The study's claims"), items(*(_claim(v) for v in verdicts))]
    runs = sum(len(c.runs) for c in configurations)
    for diffs, claim_blocks, limit in ((differences, claims, runs), (differences, claims, 20),
                                       ([], claims, 20), ([], claims, 0), ([], [], 0)):  # fmt: skip
        text = to_markdown([*head, *diffs, *claim_blocks,
                            *_runs(configurations, run_href, limit)])  # fmt: skip
        if len(text) <= DESCRIPTION_LIMIT:
            return text
    return text[: DESCRIPTION_LIMIT - 40] + "\n\n… (cut: see report.html)"


def _claim(verdict: Verdict) -> str:
    numbers = f" — {'; '.join(verdict.brief)}" if verdict.brief else ""
    return f"({verdict.letter}) {verdict.claim.rstrip('.')}: **{verdict.verdict}**{numbers}"


def _files(artifact_href: Callable[[str], str | None]) -> Block:
    """Where the rest is: report.html and the CSV files, opened in the run's artifact viewer."""
    parts: list = []
    for name, what in (("report.html", "every chart, rule and run"),
                       ("table.csv", "the configurations, unrounded"),
                       ("differences.csv", "every difference, unrounded")):  # fmt: skip
        href = artifact_href(name)
        parts += ["; " if parts else "", Link(name, href) if href else f"`{name}`", f" ({what})"]
    return paragraph("In this run's Artifacts: ", *parts, ".")


def _differences(sections: Mapping[str, Sequence[Section]]) -> list[Block]:
    blocks: list[Block] = []
    for factor in FACTORS:
        for s in sections[factor]:
            if s.stats.reference is None:
                blocks.append(paragraph(f"**{factor.capitalize()}** ({s.context}): no reference:"
                                        f" {s.stats.chosen}."))  # fmt: skip
                continue
            reference = s.comparison.label(s.stats.reference)
            lines = [f"{d.value} − {d.reference}: {describe_difference(d, 100.0, 'pp')}"
                     for d in s.stats.differences]  # fmt: skip
            if s.stats.floor and not s.stats.image_level:
                lines.append(f"test-set sampling floor at {reference}: ±{s.stats.floor * 100:.2f}"
                             f" pp (n_test = {s.stats.n_test})")  # fmt: skip
            blocks += [paragraph(f"**{factor.capitalize()}** ({s.context}), against {reference}:"),
                       items(*lines)]  # fmt: skip
    return [Heading(4, "Differences"), *blocks] if blocks else []


def _runs(configurations: Sequence[Configuration], run_href: Callable[[RunRecord], str | None],
          limit: int) -> list[Block]:  # fmt: skip
    """A line per run, linked to its page, `limit` lines at most; none when `limit` is 0."""
    if not limit:
        return []
    lines = []
    for number, configuration in enumerate(configurations, 1):
        for run in configuration.runs:
            href = run_href(run)
            lines.append((Link(run.name, href) if href else run.name,
                          f" (configuration {number}, seed {run.seed}): "
                          f"{run.headline * 100:.2f} % at epoch {run.selected_epoch}"))  # fmt: skip
    more = len(lines) - limit
    lines = lines[:limit] + ([f"… and {more} more: see report.html"] if more > 0 else [])
    return [Heading(4, "Compared runs"), items(*lines)]
