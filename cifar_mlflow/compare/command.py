"""`cifar-mlflow compare`'s options; the work is in job.py, imported when the command runs."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.config import DEFAULT_EXPERIMENT
from ..options import EXPERIMENT_NAME

DEFAULT_OUTPUT_DIR = "outputs/compare"


@click.command()
@click.option("--experiment", type=EXPERIMENT_NAME, default=DEFAULT_EXPERIMENT, show_default=True,
              help="the experiment whose training runs are compared")  # fmt: skip
@click.option("--filter", "filter_string", default="", metavar="FILTER",
              help="an MLflow search filter, e.g. \"params.epochs = '40'\"")  # fmt: skip
@click.option("--sweep", default="", help="only the runs of this sweep (tag sweep_id)")
@click.option("--include-unfinished", type=click.BOOL, is_flag=False, flag_value="true",
              default=False, show_default=True,
              help="count RUNNING, FAILED and KILLED runs too (`--include-unfinished` alone: true)")  # fmt: skip
@click.option("--output-dir", type=click.Path(file_okay=False), default=DEFAULT_OUTPUT_DIR,
              show_default=True, help="where the charts, table and report.md are written")  # fmt: skip
def compare(experiment, filter_string, sweep, include_unfinished, output_dir) -> None:
    """Chart and tabulate the training runs of an experiment, and log it all to a compare run."""
    from ..tracking.training_runs import Selection
    from .job import run_compare

    selection = Selection(experiment, filter_string, sweep, include_unfinished)
    run_id, counts = run_compare(selection, output_dir)
    click.echo(
        f"compared {counts['runs']} runs in {counts['configurations']} configurations "
        f"({counts['comparisons']} comparison charts): {Path(output_dir) / 'report.md'}, "
        f"logged to run {run_id}"
    )
