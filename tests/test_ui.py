"""What a user sees in the MLflow UI, in a real browser (Playwright driving the system Chromium):
an experiment opened from the link the tool prints is in model-training mode, its chart view
holds training metrics only (compare's counts are tags), and the compare run's description
reads as lists with links that the UI resolves."""

from __future__ import annotations

import os
import shutil
import uuid

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from cifar_mlflow.cli import cli
from cifar_mlflow.testing.runs import log_synthetic_run
from cifar_mlflow.tracking.runs import ui_url

from .conftest import tracking_on

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(mlflow_server):
    """Two activations over two seeds, and the compare run made of them."""
    experiment = f"ui-{uuid.uuid4().hex[:8]}"
    with tracking_on(mlflow_server.uri) as env:
        for activation, quality in (("relu", 0.0), ("gelu", 0.05)):
            for seed in (0, 1):
                log_synthetic_run(experiment, quality, seed=seed, activation=activation)
        env.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # set_experiment() exported it
        result = CliRunner().invoke(cli, ["compare", "--experiment", experiment,
                                          "--output-dir", str(mlflow_server.root / "ui")])  # fmt: skip
        assert result.exit_code == 0, result.output
        client = MlflowClient()
        compare = client.get_run(result.output.split("logged to run ")[1].split()[0])
        training = {k for r in client.search_runs([compare.info.experiment_id]) for k in
                    r.data.metrics if "model" in r.data.tags}  # fmt: skip
        yield compare, training, ui_url(compare.info.experiment_id)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium; .ci/run does)")
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: Chromium's own sandbox refuses to run as root (CI runs as root).
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def new_page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.set_default_timeout(90_000)  # the UI's first load on a busy 2-core machine
    return page


def test_the_printed_link_opens_the_experiment_in_model_training_mode(study, browser, tmp_path):
    _, _, experiment_url = study
    page = new_page(browser)
    page.goto(experiment_url)
    page.get_by_text("Model registry").first.wait_for()
    page.screenshot(path=tmp_path / "experiment.png")
    sidebar = page.locator("nav").first.inner_text()
    assert {"Runs", "Models", "Model registry"} <= set(sidebar.split("\n")), sidebar
    assert "Judges" not in sidebar and "Prompts" not in sidebar, sidebar


def test_the_chart_view_holds_training_metrics_only(study, browser, tmp_path):
    _, training, experiment_url = study
    page = new_page(browser)
    page.goto(experiment_url.replace("?", "/runs?") + "&compareRunsMode=CHART")
    cards = page.locator('[data-testid="experiment-view-compare-runs-card"]')
    cards.first.wait_for()
    page.screenshot(path=tmp_path / "charts.png")
    titles = {card.inner_text().split("\n")[0].strip() for card in cards.all()}
    assert titles and titles <= training, titles - training  # no compare.* or export.* chart


def test_the_compare_description_reads_as_lists_with_links_that_resolve(study, browser, tmp_path):
    compare, _, _ = study
    page = new_page(browser)
    page.goto(ui_url(compare.info.experiment_id, compare.info.run_id))
    page.get_by_text("Configurations", exact=True).first.wait_for()
    more = page.get_by_text("Show more")
    if more.count():
        more.first.click()
    page.screenshot(path=tmp_path / "description.png", full_page=True)
    description = page.get_by_text("Configurations", exact=True).first.locator("xpath=..")
    assert description.locator("table").count() == 0  # drawn without padding by the UI
    assert description.locator("li").count() >= 2 + 2  # a line per configuration, per run...
    with page.context.expect_page() as opened:  # the UI opens a description's links in a tab
        description.get_by_role("link", name="report.html").click()
    frame = opened.value.wait_for_selector("iframe.mlflow-html-iframe").content_frame()
    frame.get_by_text("CIFAR-10 ablation: comparison").first.wait_for()
