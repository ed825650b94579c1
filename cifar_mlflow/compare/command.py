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
@click.option("--min-effect", type=click.FloatRange(min=0, min_open=True), default=0.5,
              show_default=True, metavar="PP",
              help="the smallest accuracy difference of interest, in percentage points: an "
                   "undecided difference says how many seeds per side would detect it")  # fmt: skip
def compare(experiment, filter_string, sweep, include_unfinished, output_dir,
            min_effect) -> None:  # fmt: skip
    """Chart and tabulate the training runs of an experiment, and log it all to a compare run."""
    from ..tracking.runs import get_run, ui_url
    from ..tracking.training_runs import Selection
    from .job import run_compare

    selection = Selection(experiment, filter_string, sweep, include_unfinished)
    run_id, counts = run_compare(selection, output_dir, min_effect=min_effect / 100)
    url = ui_url(get_run(run_id).info.experiment_id, run_id)
    click.echo(
        f"compared {counts['runs']} runs in {counts['configurations']} configurations "
        f"({counts['comparisons']} comparison charts): {Path(output_dir) / 'report.md'}, "
        f"logged to run {run_id}" + (f" at {url}" if url else "")
    )
