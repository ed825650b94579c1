"""`cifar-mlflow compare`: grouping and numbers as pure functions, then real runs on the real server.

Synthetic runs (cifar_mlflow.testing.runs) are opened, tagged and summarised by the trainer's own
tracking code with fabricated epochs, so they look exactly like trained ones.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from PIL import Image

from cifar_mlflow.cli import cli
from cifar_mlflow.compare.charts import (
    ComparisonFigures,
    ForestFigures,
    PngWriter,
    RunPages,
    factor_colours,
    forest_text,
    nice_limits,
)  # fmt: skip
from cifar_mlflow.compare.job import HISTORY_KEYS
from cifar_mlflow.compare.report import write_report
from cifar_mlflow.compare.stats import comparison_stats
from cifar_mlflow.compare.study import (
    Curve,
    RunRecord,
    effective_config,
    find_comparisons,
    group_configurations,
    seed_band,
    table_rows,
)  # fmt: skip
from cifar_mlflow.core.config import TrainConfig
from cifar_mlflow.testing.runs import log_synthetic_run
from cifar_mlflow.tracking import history, training
from cifar_mlflow.tracking.history import fetch_histories
from cifar_mlflow.tracking.runs import tracked_run
from cifar_mlflow.tracking.training_runs import TRAINED_BY_TAG, where_training_runs_are

from .conftest import PROJECT_ROOT, free_port, on_both_stores, tracking_on


def compare(*args: str):
    return CliRunner().invoke(cli, ["compare", *args])


def read_table(folder: Path) -> list[dict[str, str]]:
    with open(folder / "table.csv", newline="") as f:
        return list(csv.DictReader(f))


def record(run_id: str, seed: int = 0, test_acc=(0.3, 0.5, 0.4), val_acc=None,
           **config: str) -> RunRecord:  # fmt: skip
    """A RunRecord made by hand: resnet18 / relu / sgd / lr 0.01 unless told otherwise."""
    config = {"model": "resnet18", "activation": "relu", "optimizer": "sgd", "lr": "0.01",
              "epochs": str(len(test_acc)), **config}  # fmt: skip
    epochs = np.arange(1, len(test_acc) + 1)
    history = {"test_acc": Curve(epochs, np.array(test_acc)),
               "train_loss": Curve(epochs, 2.0 / epochs),
               "epoch_seconds": Curve(epochs, np.full(len(epochs), 10.0 + seed))}  # fmt: skip
    if val_acc is not None:
        history["val_acc"] = Curve(epochs, np.array(val_acc))
    return RunRecord(run_id, run_id, config, seed, 11173962, history)


# --- pure: grouping, bands, table ---------------------------------------------------------------


def test_effective_config_spells_values_one_way():
    """`mlflow run` logs parameters as typed; the tags carry the parsed factor names."""
    params = {"model": "ResNet18", "activation": "relu", "optimizer": "sgd", "lr": "1e-2",
              "epochs": "40.0", "compile": "false", "momentum": "0.9", "seed": "3",
              "experiment": "x", "model_params": "11173962"}  # fmt: skip
    tags = {"model": "resnet18", "activation": "relu", "optimizer": "sgd"}
    config = effective_config(params, tags)
    # A run logged without an init param was trained with Kaiming initialisation.
    assert config == {"model": "resnet18", "activation": "relu", "optimizer": "sgd",
                      "lr": "0.01", "epochs": "40", "compile": "False", "init": "kaiming"}  # fmt: skip
    assert effective_config({**params, "init": "torch-default"}, tags)["init"] == "torch-default"
    momentum = effective_config(
        {**params, "optimizer": "momentum"}, {**tags, "optimizer": "momentum"}
    )
    assert momentum["momentum"] == "0.9"


def test_runs_group_into_configurations_and_one_factor_comparisons():
    runs = [
        record("relu-0", seed=0), record("relu-1", seed=1),
        record("gelu", activation="gelu"),
        record("adam", optimizer="adam"),
        record("momentum", optimizer="momentum", momentum="0.9"),
        record("ghost", model="ghost_resnet18"),
        record("ghost-gelu", model="ghost_resnet18", activation="gelu"),
        record("lr", lr="0.1"),  # differs in lr as well: compared with nothing
    ]  # fmt: skip
    configurations = group_configurations(runs)
    assert [[r.run_id for r in c.runs] for c in configurations] == [
        ["relu-0", "relu-1"],
        ["lr"],
        ["momentum"],
        ["adam"],
        ["gelu"],
        ["ghost"],
        ["ghost-gelu"],
    ]

    def shape(factor):
        return [[c.config[factor] for c in comparison.configurations]
                for comparison in find_comparisons(configurations, factor)]  # fmt: skip

    assert shape("activation") == [["relu", "gelu"], ["relu", "gelu"]]  # on each model
    assert shape("optimizer") == [["sgd", "momentum", "adam"]]  # momentum's own setting aside
    assert shape("model") == [["resnet18", "ghost_resnet18"], ["resnet18", "ghost_resnet18"]]
    [activation_on_resnet, _] = find_comparisons(configurations, "activation")
    assert activation_on_resnet.fixed["model"] == "resnet18"
    assert [len(c.runs) for c in activation_on_resnet.configurations] == [2, 1]


def test_seed_band_is_mean_min_max_per_epoch_over_the_runs_reaching_it():
    band = seed_band([
        Curve(np.array([1, 2, 3]), np.array([0.2, 0.4, 0.6])),
        Curve(np.array([1, 2, 3]), np.array([0.4, 0.8, 0.7])),
        Curve(np.array([1, 2]), np.array([0.3, 0.3])),  # stopped after two epochs
    ])  # fmt: skip
    assert band.n == 3
    assert band.epochs.tolist() == [1, 2, 3]
    assert np.allclose(band.mean, [0.3, 0.5, 0.65])
    assert np.allclose(band.low, [0.2, 0.3, 0.6])
    assert np.allclose(band.high, [0.4, 0.8, 0.7])


def test_table_rows_are_mean_and_sample_std_over_seeds():
    runs = [record("a", seed=0, test_acc=(0.3, 0.5, 0.4)), record("b", seed=1, test_acc=(0.2, 0.3, 0.7)),
            record("c", activation="gelu", test_acc=(0.6, 0.1))]  # fmt: skip
    relu, gelu = table_rows(group_configurations(runs))
    assert relu["seeds"] == "0 1" and relu["runs"] == 2 and relu["params"] == 11173962
    assert relu["headline"] == "final_test_acc"  # no validation split: judged at the last epoch
    assert relu["headline_mean"] == relu["final_test_acc_mean"] == pytest.approx(0.55)
    assert relu["headline_std"] == pytest.approx(np.std([0.4, 0.7], ddof=1))
    assert relu["max_test_acc_mean"] == pytest.approx(0.6)  # the optimistic max, kept apart
    assert relu["selected_epoch_mean"] == 3
    assert relu["seconds_per_epoch_mean"] == pytest.approx(10.5)
    assert relu["epochs"] == "3" and gelu["epochs"] == "2"  # epochs is a table column anyway
    assert gelu["headline_std"] is None and gelu["selected_epoch_mean"] == 2


def test_the_headline_is_test_accuracy_at_the_best_validation_epoch():
    """Chosen on validation (ties to the earlier epoch), never on the test set."""
    run = record("v", test_acc=(0.3, 0.7, 0.5, 0.6), val_acc=(0.4, 0.5, 0.6, 0.6))
    assert run.validated and run.selected_epoch == 3  # epochs 3 and 4 tie: the earlier
    assert run.headline == run.test_acc_at_best == 0.5
    assert run.max_test_acc == 0.7 and run.final_test_acc == 0.6
    [row] = table_rows(group_configurations([run]))
    assert row["headline"] == "test_acc_at_best" and row["headline_mean"] == 0.5


def test_axis_limits_are_round_with_a_margin_and_stop_at_the_ceiling():
    assert nice_limits(0.805, 1.85) == pytest.approx((0.6, 2.0))  # 0.8 would cut the marker
    assert nice_limits(91.0, 99.5, ceiling=100) == (90.0, 100)  # no 105 % tick
    assert nice_limits(0.1, 3e7, ceiling=4.6) == (0.0, 4.6)  # a diverged loss leaves the chart


def test_factor_values_keep_their_colour_whatever_the_selection():
    some = group_configurations([record("a", activation="gelu")])
    more = group_configurations(
        [record("b"), record("c", activation="gelu"), record("d", model="x")]
    )
    assert factor_colours(some)["activation"]["gelu"] == factor_colours(more)["activation"]["gelu"]
    assert factor_colours(more)["model"]["x"] not in {
        factor_colours(more)["model"][m] for m in ("resnet18", "ghost_resnet18")
    }


def test_figures_show_bands_bars_the_floor_n_1_and_every_run(tmp_path):
    """The figures as drawn: a line per value and a band where a value has several runs, the
    model comparison's bars, the forest plot's floor band and hollow n = 1 dot, and pages of
    four configurations with a line per split holding every run, its headline dot, and a note
    for a loss off the scale."""
    relu = [dataclasses.replace(record(f"relu-{s}", seed=s, val_acc=(0.3, 0.4, 0.4)),
                                test_images=1000) for s in (0, 1)]  # fmt: skip
    gelu = record("gelu", activation="gelu", test_acc=(0.4, 0.6, 0.5))
    ghost = [record(f"ghost-{s}", seed=s, model="ghost_resnet18") for s in (0, 1)]
    diverged = record("sigmoid", seed=3, activation="sigmoid")
    diverged.history["train_loss"] = Curve(np.arange(1, 4), np.array([2.0, 9e5, np.inf]))
    adam = record("adam", optimizer="adam")
    configurations = group_configurations([*relu, gelu, *ghost, diverged, adam])
    colours = factor_colours(configurations)
    written = []
    with PngWriter(written.append) as png:
        [activations] = find_comparisons(configurations, "activation")
        curves = ComparisonFigures("activation", colours["activation"], png)
        curves.save(activations, "title", tmp_path / "curves.png")
        accuracy = curves.curve_axes[0]
        # relu alone has 2 runs
        assert len(accuracy.lines) == 3 and len(accuracy.collections) == 1
        assert [t.get_text() for t in curves.figure.legends[0].get_texts()] == [
            "relu (n=2)", "gelu (n=1)", "sigmoid (n=1)"]  # fmt: skip
        [models] = find_comparisons(configurations, "model")
        bars = ComparisonFigures("model", colours["model"], png)
        bars.save(models, "title", tmp_path / "models.png")
        assert [len(ax.patches) for ax in bars.bar_axes] == [2, 2, 2]
        assert [t.get_text() for t in bars.bar_axes[0].texts] == ["11.17M", "11.17M"]

        stats = comparison_stats(activations)
        forest = ForestFigures(2, png)
        forest.save(stats, "title", colours["activation"], tmp_path / "forest.png")
        [floor] = forest.ax.patches
        assert floor.get_x() == pytest.approx(-stats.floor * 100) and stats.floor > 0
        dots = [line for line in forest.ax.lines if line.get_marker() == "o"]
        assert [d.get_markerfacecolor() for d in dots] == ["white", "white"]  # n = 1 each
        rows = [forest_text(d) for d in stats.differences]
        assert [t.get_text() for t in forest.ax.texts] == rows

        pages = RunPages(png)
        columns = [(str(number), c) for number, c in enumerate(configurations, 1)]
        pages.save(columns[:4], tmp_path / "runs-1.png")
        shown = [ax for ax in pages.grid.flat if ax.get_visible()]
        assert len(shown) == 8 and all(len(ax.lines) >= 3 for ax in shown)  # train, val, test
        relu_accuracy = pages.grid[0, 0]  # both runs judged at epoch 2, their best validation
        assert list(relu_accuracy.lines[-1].get_xdata()) == [2, 2]
        notes = [t.get_text() for ax in pages.grid[1] for t in ax.texts]
        assert notes == ["seed 3: loss off the\nscale, up to inf"]
        pages.save(columns[4:], tmp_path / "runs-2.png")  # ghost_resnet18's page: the last
        assert sum(ax.get_visible() for ax in pages.grid.flat) == 2
        assert [t for ax in pages.grid.flat for t in ax.texts] == []  # the first page's are gone
    # each file handed on once whole, from the writer's thread
    assert sorted(written) == sorted(tmp_path.glob("*.png")) and len(written) == 5
    for path in written:
        with Image.open(path) as image:
            assert image.width >= 1000 and image.height > 200, path


def test_a_figure_that_cannot_be_written_fails_the_block_and_is_handed_on_to_no_one(tmp_path):
    written = []
    with pytest.raises(FileNotFoundError), PngWriter(written.append) as png:
        png(RunPages(png).figure, tmp_path / "gone" / "page.png")
    assert written == []


# --- real runs on the real server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tracking_server):
    """Finished runs for all three comparisons (relu with three seeds), a run that failed after
    two epochs, and a run of another job; logged once for the tests of this module, which add
    only compare runs to it (and count them before and after)."""
    experiment = f"study-{uuid.uuid4().hex[:8]}"
    with tracking_on(tracking_server.uri):
        ids = _log_study(experiment)
    return experiment, ids


def _log_study(experiment: str) -> dict[str, list[str]]:
    ids = {
        "relu": [log_synthetic_run(experiment, seed=s) for s in (0, 1, 2)],
        "gelu": [log_synthetic_run(experiment, activation="gelu", quality=0.1)],
        "adam": [log_synthetic_run(experiment, optimizer="adam", quality=0.05)],
        "ghost": [log_synthetic_run(experiment, model="ghost_resnet18", seed=s) for s in (0, 1)],
    }
    ids["failed"] = [log_synthetic_run(experiment, activation="sigmoid", status="FAILED")]
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name(experiment).experiment_id):
        mlflow.set_tags({"job": "export"})  # another job's run: no `model` tag
        mlflow.log_metric("test_acc", 0.99, step=1)
    return ids


def compare_runs(experiment: str) -> list:
    return mlflow.search_runs(experiment_names=[experiment], filter_string="tags.job = 'compare'",
                              output_format="list")  # fmt: skip


def test_compare_logs_charts_table_and_report_matching_the_runs(study, tracking, tmp_path):
    experiment, ids = study
    out = tmp_path / "report"
    result = compare("--experiment", experiment, "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert "compared 7 runs in 4 configurations (3 comparison charts)" in result.output

    run = mlflow.get_run(result.output.split("logged to run ")[1].split()[0])
    assert run.info.status == "FINISHED" and run.data.tags["job"] == "compare"
    assert run.info.run_name == "compare"
    # Its own numbers as tags: no metric, so nothing in the experiment's charts.
    assert run.data.metrics == {}
    assert {k: run.data.tags[k] for k in ("compare.runs", "compare.configurations",
                                          "compare.comparisons")} == {  # fmt: skip
        "compare.runs": "7", "compare.configurations": "4", "compare.comparisons": "3"}
    assert run.info.experiment_id == mlflow.get_experiment_by_name(experiment).experiment_id
    assert run.data.params["experiment"] == experiment
    client = MlflowClient()
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert logged == {
        "report.md",
        "report.html",
        "table.md",
        "table.csv",
        "differences.csv",
        "comparisons",
        "runs",
    }
    written = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    for folder in ("comparisons", "runs"):
        assert {a.path for a in client.list_artifacts(run.info.run_id, folder)} == {
            p for p in written if p.startswith(folder + "/")
        }
    assert sorted(p.split("__")[0] for p in written if p.startswith("comparisons/")) == [
        f"comparisons/{factor}" for factor in ("activation", "model", "optimizer") for _ in "ab"
    ]  # each: its curves and its forest plot of differences
    # Every finished run on the runs pages: its 4 configurations, side by side on one page.
    assert [p for p in written if p.startswith("runs/")] == ["runs/configurations-1-4.png"]
    for png in out.rglob("*.png"):
        with Image.open(png) as image:
            assert image.width >= 1000 and len(image.getcolors(image.width * image.height)) > 8

    report = (out / "report.md").read_text()
    for png in written:
        assert f"]({png})" in report
    assert "## Model comparisons" in report and "### relu · sgd · lr 0.01 · 4 epochs" in report
    assert "[table.csv](table.csv)" in report  # the CSV's path as logged, next to report.md
    html = (out / "report.html").read_text()
    assert (
        html.count('src="data:image/png;base64,') == len(written) and 'src="comparisons' not in html
    )
    description = run.data.tags["mlflow.note.content"]
    assert "#### Differences" in description and "#### The study's claims" in description
    # No Markdown table (the UI draws them without padding), and only links the UI resolves.
    assert "\n|" not in description and "](table.csv)" not in description
    experiment_id = run.info.experiment_id
    for run_id in (i for k, v in ids.items() if k != "failed" for i in v):
        assert f"(#/experiments/{experiment_id}/runs/{run_id}?workflowType=" in description
    for name in ("report.html", "table.csv", "differences.csv"):
        route = f"#/experiments/{experiment_id}/runs/{run.info.run_id}/artifacts/{name}?"
        assert f"[{name}]({route}" in description

    rows = {row["activation"] + "/" + row["optimizer"] + "/" + row["model"]: row
            for row in read_table(out)}  # fmt: skip
    assert set(rows) == {"relu/sgd/resnet18", "gelu/sgd/resnet18", "relu/adam/resnet18",
                         "relu/sgd/ghost_resnet18"}  # fmt: skip
    expected = {"relu/sgd/resnet18": ids["relu"], "gelu/sgd/resnet18": ids["gelu"],
                "relu/adam/resnet18": ids["adam"], "relu/sgd/ghost_resnet18": ids["ghost"]}  # fmt: skip
    for key, run_ids in expected.items():
        row = rows[key]
        assert row["run_ids"].split() == run_ids
        assert_row_matches_logged_metrics(row, run_ids, client)
    assert rows["relu/sgd/resnet18"]["seeds"] == "0 1 2"
    assert rows["relu/sgd/ghost_resnet18"]["params"] == "5706186"
    markdown = (out / "table.md").read_text()
    relu = rows["relu/sgd/resnet18"]
    headline, std = float(relu["headline_mean"]), float(relu["headline_std"])
    assert f"| {headline * 100:.2f} ± {std * 100:.2f} |" in markdown


def assert_row_matches_logged_metrics(row: dict[str, str], run_ids: list[str], client) -> None:
    """By hand from the logged histories: the epoch of the highest val_acc (the earliest of
    equals), the test accuracy there; and the same as the training run's own summary."""
    runs = [client.get_run(i) for i in run_ids]

    def history(run_id, key):
        return {m.step: m.value for m in client.get_metric_history(run_id, key)}

    best_epochs = [
        min(h, key=lambda e: (-h[e], e)) for h in (history(i, "val_acc") for i in run_ids)
    ]
    at_best = [history(i, "test_acc")[e] for i, e in zip(run_ids, best_epochs)]
    maxima = [max(history(i, "test_acc").values()) for i in run_ids]
    final = [r.data.metrics["test_acc"] for r in runs]  # the latest step's value
    seconds = [np.mean(list(history(i, "epoch_seconds").values())) for i in run_ids]
    assert [r.data.metrics["best_epoch"] for r in runs] == best_epochs
    assert [r.data.metrics["test_acc_at_best"] for r in runs] == pytest.approx(at_best)
    assert [r.data.metrics["final_test_acc"] for r in runs] == pytest.approx(final)
    assert row["headline"] == "test_acc_at_best"
    assert float(row["headline_mean"]) == pytest.approx(np.mean(at_best))
    assert float(row["test_acc_at_best_mean"]) == pytest.approx(np.mean(at_best))
    assert float(row["max_test_acc_mean"]) == pytest.approx(np.mean(maxima))
    assert float(row["final_test_acc_mean"]) == pytest.approx(np.mean(final))
    if len(runs) > 1:
        assert float(row["headline_std"]) == pytest.approx(np.std(at_best, ddof=1))
        assert float(row["final_test_acc_std"]) == pytest.approx(np.std(final, ddof=1))
    else:
        assert row["headline_std"] == row["final_test_acc_std"] == ""
    assert float(row["selected_epoch_mean"]) == pytest.approx(np.mean(best_epochs))
    assert float(row["seconds_per_epoch_mean"]) == pytest.approx(np.mean(seconds))
    assert row["params"] == runs[0].data.params["model_params"]


@on_both_stores
def test_bulk_fetch_equals_one_call_per_run_and_metric(study, tracking, monkeypatch):
    """Chunks of 3 runs, replies cut at 7 points: the 4-epoch histories come back whole anyway,
    and equal to what a store without the bulk endpoint (sqlite, files) answers."""
    _, ids = study
    run_ids = [i for v in ids.values() for i in v]
    client = MlflowClient()
    monkeypatch.setattr(history, "BULK_MAX_RUNS", 3)
    monkeypatch.setattr(history, "BULK_MAX_POINTS", 7)
    fetched = fetch_histories(run_ids, HISTORY_KEYS)
    assert set(fetched) == set(run_ids)
    for run_id in run_ids:
        for key in HISTORY_KEYS:
            logged = client.get_metric_history(run_id, key)
            assert fetched[run_id][key] == {m.step: m.value for m in logged}
            assert list(fetched[run_id][key]) == sorted(m.step for m in logged)
    monkeypatch.setattr(history, "is_http", lambda uri: False)  # the per-run path
    assert fetch_histories(run_ids, HISTORY_KEYS) == fetched


def test_unfinished_runs_count_only_when_asked_and_compare_runs_never(study, tracking, tmp_path):
    experiment, ids = study
    before = len(compare_runs(experiment))
    result = compare("--experiment", experiment, "--output-dir", str(tmp_path / "a"))
    assert "compared 7 runs in 4 configurations" in result.output
    result = compare("--experiment", experiment, "--include-unfinished",
                     "--output-dir", str(tmp_path / "b"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "compared 8 runs in 5 configurations" in result.output  # + the failed sigmoid run
    [sigmoid] = [r for r in read_table(tmp_path / "b") if r["activation"] == "sigmoid"]
    assert sigmoid["run_ids"] == ids["failed"][0]
    assert len(compare_runs(experiment)) == before + 2


def test_runs_not_trained_by_this_tool_and_runs_without_an_epoch_are_left_out_and_said(
    tracking, tmp_path
):
    """Beside ours: a run of another tool with a `model` tag and param, logged with mlflow; one
    of ours recorded before the trained_by tag (known by its params); one that failed in its
    first epoch, before logging one."""
    ours = [log_synthetic_run(tracking, activation=a) for a in ("relu", "gelu")]
    legacy = log_synthetic_run(tracking, activation="sigmoid")
    MlflowClient().delete_tag(legacy, TRAINED_BY_TAG)
    experiment_id = mlflow.get_experiment_by_name(tracking).experiment_id
    with mlflow.start_run(experiment_id=experiment_id, run_name="forest") as foreign:
        mlflow.set_tag("model", "random_forest")
        mlflow.log_params({"model": "random_forest", "n_estimators": 100, "seed": 0})
        for step, acc in enumerate((0.5, 0.6), 1):
            mlflow.log_metrics({"test_acc": acc, "train_loss": 1 / step}, step=step)
    config = TrainConfig(experiment=tracking, activation="leaky_relu", system_metrics=False)
    with pytest.raises(RuntimeError), tracked_run(training.training_run(config)) as failed:
        raise RuntimeError("the loss became nan in epoch 1")

    out = tmp_path / "report"
    result = compare("--experiment", tracking, "--include-unfinished", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert "compared 3 runs in 3 configurations" in result.stdout
    said = [line for line in result.stderr.splitlines() if line.startswith("warning: left out")]
    assert said == [
        "warning: left out 1 run(s) not recorded by `cifar-mlflow train` (no trained_by tag, "
        "nor its params): forest",
        f"warning: left out 1 run(s) that logged no epoch ({failed_name(failed)} FAILED: "
        "RuntimeError: the loss became nan in epoch 1)",
    ], result.stderr
    assert sorted(r["run_ids"] for r in read_table(out)) == sorted([*ours, legacy])
    assert foreign.info.run_id not in (out / "report.md").read_text()
    assert "left out 1 run(s) not recorded by" in (out / "report.md").read_text()

    # The "training runs are in ..." hint counts the same runs: ours, not the foreign one.
    hint = where_training_runs_are(f"{tracking}-elsewhere")
    assert f"{tracking!r} (5 runs)" not in hint
    if repr(tracking) in hint:
        assert f"{tracking!r} (4 runs)" in hint


def failed_name(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.run_name


def test_filter_and_sweep_narrow_the_selection(tracking, tmp_path):
    in_sweep = [log_synthetic_run(tracking, activation=a, tags={"sweep_id": "s1"})
                for a in ("relu", "gelu")]  # fmt: skip
    log_synthetic_run(tracking, activation="sigmoid")
    result = compare("--experiment", tracking, "--sweep", "s1", "--output-dir", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    assert sorted(r["run_ids"] for r in read_table(tmp_path / "s")) == sorted(in_sweep)

    result = compare("--experiment", tracking, "--filter", "params.activation != 'relu'",
                     "--output-dir", str(tmp_path / "f"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(r["activation"] for r in read_table(tmp_path / "f")) == ["gelu", "sigmoid"]
    report = (tmp_path / "f" / "report.md").read_text()
    assert "No two configurations differ only in the model." in report


def test_a_second_report_replaces_the_first_without_stale_figures(tracking, tmp_path):
    first = [log_synthetic_run(tracking), log_synthetic_run(tracking, model="ghost_resnet18")]
    out = tmp_path / "report"
    assert compare("--experiment", tracking, "--output-dir", str(out)).exit_code == 0
    assert len(list((out / "comparisons").iterdir())) == 2  # the model comparison's figures
    (out / "notes.txt").write_text("mine")
    second = log_synthetic_run(tracking, activation="gelu")
    assert compare("--experiment", tracking, "--filter", f"attributes.run_id = '{second}'",
                   "--output-dir", str(out)).exit_code == 0  # fmt: skip
    figures = [p.relative_to(out).as_posix() for p in out.rglob("*.png")]
    assert figures == ["runs/configurations-1-1.png"]
    assert not any(run_id in (out / "table.csv").read_text() for run_id in first)
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--experiment", "no-such-experiment"], ["'no-such-experiment' does not exist"]),
        (["--filter", "params.lr >>> 1"], ["--filter 'params.lr >>> 1'", "refused"]),
        (["--filter", "params.activation = 'swish'"], ["no finished training runs", "swish"]),
        (["--sweep", "nope"], ["no finished training runs", "--sweep 'nope'"]),
    ],
)
def test_bad_selections_fail_in_one_line_and_leave_nothing(args, fragments, study, tracking,
                                                           tmp_path):  # fmt: skip
    experiment, _ = study
    before = len(compare_runs(experiment))
    if args[0] != "--experiment":
        args = ["--experiment", experiment, *args]
    result = compare(*args, "--output-dir", str(tmp_path / "report"))
    assert_one_line_error(result, fragments)
    assert list(tmp_path.iterdir()) == []
    assert len(compare_runs(experiment)) == before


def test_an_empty_experiment_names_the_one_holding_training_runs(study, tracking, tmp_path):
    """README's path: `mlflow run` without --experiment-name trains into another experiment."""
    experiment, _ = study
    mlflow.create_experiment(tracking)
    result = compare("--experiment", tracking, "--output-dir", str(tmp_path / "report"))
    assert_one_line_error(result, [f"no finished training runs in experiment {tracking!r}",
                                   f"--experiment {experiment}"])  # fmt: skip


def test_unreachable_server_fails_fast_in_one_line(tracking, tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_MLFLOW_SERVER_WAIT", "1")  # default 10 s: tests/test_cli_errors.py
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    result = compare("--experiment", tracking, "--output-dir", str(tmp_path / "report"))
    assert_one_line_error(result, ["tracking server", "unreachable"])
    assert list(tmp_path.iterdir()) == []


def assert_one_line_error(result, fragments: list[str]) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.slow
def test_mlflow_run_compare_logs_the_report_to_its_own_run(tracking, mlflow_server, tmp_path):
    for activation in ("relu", "gelu"):
        log_synthetic_run(tracking, activation=activation)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri,
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    env.pop("MLFLOW_EXPERIMENT_ID", None)  # set_experiment() exported it; mlflow run picks its own
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "--env-manager", "local",
         "-e", "compare", "--experiment-name", tracking, "-P", f"experiment={tracking}",
         "-P", "filter=params.epochs = '4'", "-P", f"output_dir={out}"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = compare_runs(tracking)
    assert run.data.tags["mlflow.project.entryPoint"] == "compare"
    assert run.info.run_name == "compare"  # the CLI's name, not mlflow run's random one
    assert run.info.status == "FINISHED" and run.data.params["include_unfinished"] == "false"
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert {"report.md", "table.csv", "comparisons", "runs"} <= artifacts
    assert len(read_table(out)) == 2


@pytest.mark.slow
def test_compare_runs_without_torch(study, tracking, mlflow_server, tmp_path):
    """The whole command in a fresh process where `import torch` fails: compare never pays for
    torch (~1.5 s of imports here). The import is refused by a finder, not by
    sys.modules['torch'] = None: scipy looks up sys.modules['torch'] and would trip on None."""
    experiment, _ = study
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ImportError('torch is blocked')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from cifar_mlflow.cli import main\n"
        f"sys.argv = ['cifar-mlflow', 'compare', '--experiment', {experiment!r}, "
        f"'--output-dir', {str(tmp_path / 'report')!r}]\n"
        "try:\n"
        "    main()\n"
        "finally:\n"
        "    assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compared 7 runs in 4 configurations" in done.stdout
    assert (tmp_path / "report" / "report.md").exists()


def test_runs_at_tuned_learning_rates_are_compared_as_such(tmp_path):
    """`sweep --tuned` runs carry tuned_from and each optimizer's own lr: one comparison, so
    labelled, with each arm's lr; untuned runs stay apart."""
    tuned = [dataclasses.replace(record(f"{o}-{s}", seed=s, optimizer=o, lr=lr), tuned_from="t1")
             for o, lr in (("sgd", "0.05"), ("adam", "0.001")) for s in (0, 1)]  # fmt: skip
    untuned = [record("sgd-plain"), record("adam-plain", optimizer="adam")]
    comparisons = find_comparisons(group_configurations([*tuned, *untuned]), "optimizer")
    assert sorted(c.tuned for c in comparisons) == [False, True]
    [at_tuned] = [c for c in comparisons if c.tuned]
    assert at_tuned.qualifier == "at tuned learning rates"
    assert [at_tuned.label(c) for c in at_tuned.configurations] == ["sgd (lr 0.05)",
                                                                    "adam (lr 0.001)"]  # fmt: skip
    write_report([*tuned, *untuned], tmp_path, "test")
    report = (tmp_path / "report.md").read_text()
    assert "### resnet18 · relu · 3 epochs · at tuned learning rates" in report
    assert "At tuned learning rates (t1): sgd lr 0.05, adam lr 0.001." in report
