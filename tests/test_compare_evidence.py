"""compare as evidence, on real runs on the real server: its differences against a computation
by hand from the logged metrics (scipy in the test), n = 1, the test set's sampling floor, and
the report as a user sees it in the MLflow UI, in a real browser (headless Chromium).

One small study is logged once for the module (synthetic runs: cifar_mlflow.testing.runs):
relu and gelu on seeds 0 and 1 (paired), sigmoid on seeds 2 and 3 (unpaired against relu),
leaky_relu on seed 0 only (n = 1); then one `cifar-mlflow compare`.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import uuid

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from scipy import stats

from cifar_mlflow.cli import cli
from cifar_mlflow.testing.runs import log_synthetic_run

from .conftest import tracking_on

TEST_IMAGES = 1000
CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
SEEDS = {"relu": (0, 1), "gelu": (0, 1), "sigmoid": (2, 3), "leaky_relu": (0,)}
QUALITY = {"relu": 0.0, "gelu": 0.05, "sigmoid": -0.2, "leaky_relu": 0.0}


@pytest.fixture(scope="module")
def compared(mlflow_server, tmp_path_factory):
    """{activation: [run ids]}, the compare run, and its output folder."""
    experiment = f"evidence-{uuid.uuid4().hex[:8]}"
    out = tmp_path_factory.mktemp("evidence") / "report"
    with tracking_on(mlflow_server.uri) as env:
        client = MlflowClient()
        ids = {}
        for activation, seeds in SEEDS.items():
            ids[activation] = [log_synthetic_run(experiment, QUALITY[activation], seed=s,
                                                 activation=activation) for s in seeds]  # fmt: skip
            for run_id in ids[activation]:  # a trained run logs its test set's size
                client.log_param(run_id, "test_images", TEST_IMAGES)
        env.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # set_experiment() exported it
        result = CliRunner().invoke(cli, ["compare", "--experiment", experiment,
                                          "--output-dir", str(out)])  # fmt: skip
        assert result.exit_code == 0, result.output
        run = client.get_run(result.output.split("logged to run ")[1].split()[0])
    return ids, run, out


def differences(out) -> dict[str, dict[str, str]]:
    with open(out / "differences.csv", newline="") as f:
        return {row["value"]: row for row in csv.DictReader(f) if row["factor"] == "activation"}


def logged(run_ids: list[str], key: str = "test_acc_at_best") -> list[float]:
    """The training runs' own summary metric (the test accuracy of the best-validation epoch)."""
    return [MlflowClient().get_run(i).data.metrics[key] for i in run_ids]


def test_differences_equal_a_hand_computation_from_the_logged_metrics(compared, tracking):
    ids, _, out = compared
    rows = differences(out)
    relu, gelu, sigmoid = logged(ids["relu"]), logged(ids["gelu"]), logged(ids["sigmoid"])

    paired = stats.ttest_rel(gelu, relu)  # same seeds 0, 1: paired by seed
    welch = stats.ttest_ind(sigmoid, relu, equal_var=False)  # seeds 2, 3 against 0, 1
    for row, values, result, test in ((rows["gelu"], gelu, paired, "paired t-test by seed"),
                                      (rows["sigmoid"], sigmoid, welch, "Welch t-test")):  # fmt: skip
        interval = result.confidence_interval(0.95)
        assert row["reference"] == "relu" and row["test"] == test
        assert float(row["mean"]) == pytest.approx(sum(values) / 2 - sum(relu) / 2)
        assert float(row["ci_low"]) == pytest.approx(interval.low)
        assert float(row["ci_high"]) == pytest.approx(interval.high)
        assert float(row["p"]) == pytest.approx(result.pvalue)
    # Holm over the comparison's two p-values: the smaller times 2, the larger times 1, monotone.
    small, large = sorted([paired.pvalue, welch.pvalue])
    holm = {small: min(1, 2 * small), large: min(1, max(2 * small, large))}
    assert float(rows["gelu"]["p_holm"]) == pytest.approx(holm[paired.pvalue])
    assert float(rows["sigmoid"]["p_holm"]) == pytest.approx(holm[welch.pvalue])

    # The test set's sampling floor at the reference's accuracy.
    p = sum(relu) / 2
    floor = 1.96 * math.sqrt(p * (1 - p) / TEST_IMAGES)
    assert float(rows["gelu"]["floor"]) == pytest.approx(floor)
    assert int(rows["gelu"]["n_test"]) == TEST_IMAGES
    report = (out / "report.md").read_text()
    assert f"±{floor * 100:.2f} pp" in report


def test_one_run_on_a_side_gives_no_interval_and_says_n_1(compared, tracking):
    ids, run, out = compared
    row = differences(out)["leaky_relu"]
    assert (row["n_value"], row["n_reference"], row["test"]) == ("1", "2", "n = 1")
    assert row["ci_low"] == row["ci_high"] == row["p"] == row["p_holm"] == ""
    assert float(row["mean"]) == pytest.approx(
        logged(ids["leaky_relu"])[0] - sum(logged(ids["relu"])) / 2
    )
    description = run.data.tags["mlflow.note.content"]
    assert "| leaky_relu − relu | 1 vs 2 |" in description and "| n = 1 |" in description


@pytest.mark.slow
def test_the_report_renders_in_the_mlflow_ui(compared, mlflow_server, tmp_path):
    """In a real browser: report.html in the run's artifact viewer shows every chart (each image
    decoded, non-zero natural size), and the run's Overview shows the summary and links to the
    compared runs."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium; .ci/run does)")
    ids, run, out = compared
    charts = len(list(out.rglob("*.png")))
    page_of_run = (
        f"{mlflow_server.uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    )
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: Chromium's own sandbox refuses to run as root (CI runs as root).
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(90_000)  # the UI's first load on a busy 2-core machine
            page.goto(f"{page_of_run}/artifacts/report.html")
            frame = page.wait_for_selector("iframe.mlflow-html-iframe").content_frame()
            frame.wait_for_function(
                "n => document.images.length === n && [...document.images].every(i => i.complete)",
                arg=charts,
            )
            sizes = frame.evaluate(
                "[...document.images].map(i => [i.naturalWidth, i.naturalHeight])"
            )
            page.screenshot(path=tmp_path / "report.png")
            assert len(sizes) == charts and all(w > 0 and h > 0 for w, h in sizes), sizes

            page.goto(page_of_run)
            page.get_by_text("CIFAR-10 ablation: comparison").first.wait_for()
            show_more = page.get_by_text("Show more")
            if show_more.count():
                show_more.first.click()
            page.get_by_text("The study's claims", exact=False).or_(
                page.get_by_role("heading", name="Claims")
            ).first.wait_for()
            page.screenshot(path=tmp_path / "overview.png", full_page=True)
            for run_id in (i for group in ids.values() for i in group):
                link = page.locator(f'a[href$="/runs/{run_id}"]')
                assert link.count() >= 1, run_id
        finally:
            browser.close()
