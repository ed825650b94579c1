"""Bad input: one line on stderr, a non-zero exit, and no MLflow run left behind."""

from __future__ import annotations

import subprocess
import sys
import time

import mlflow
import pytest

from .conftest import free_port, tiny_train_args


def cifar_mlflow(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real console entry point in a subprocess: what a user sees, traceback or not."""
    return subprocess.run(
        [sys.executable, "-m", "cifar_mlflow", *args], capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def assert_no_runs(experiment: str) -> None:
    if mlflow.get_experiment_by_name(experiment) is not None:
        runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
        assert runs == [], [r.info.status for r in runs]


@pytest.mark.parametrize(
    "bad, fragments",
    [
        (["--activation", "swish"], ["--activation", "'swish' is not one of"]),
        (["--optimizer", "rmsprop"], ["--optimizer"]),
        (["--epochs", "0"], ["--epochs", "0 is not in the range"]),
        (["--lr", "-0.1"], ["--lr"]),
        (["--batch-size", "-8"], ["--batch-size"]),
        (["--train-limit", "-1"], ["--train-limit"]),
    ],
)
def test_bad_options_are_rejected_before_any_run(bad, fragments, image_folder, tracking):
    result = cifar_mlflow(*tiny_train_args(image_folder, tracking, *bad))
    assert result.returncode == 2
    assert_one_line_error(result, *fragments)
    assert_no_runs(tracking)


def test_malformed_data_directory(tmp_path, tracking):
    (tmp_path / "train").mkdir()
    result = cifar_mlflow(*tiny_train_args(tmp_path, tracking))
    assert_one_line_error(result, "no class folders", str(tmp_path / "train"))
    assert_no_runs(tracking)


def test_class_folder_missing_from_one_split(tmp_path, image_folder, tracking):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    shutil.rmtree(data / "test" / "frog")
    result = cifar_mlflow(*tiny_train_args(data, tracking))
    assert_one_line_error(result, "test/frog")
    assert_no_runs(tracking)


@pytest.mark.slow  # waits the real 10 s; the other commands' tests wait 1 s
def test_unreachable_tracking_server_fails_within_15_seconds(image_folder, tracking, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    result = cifar_mlflow(*tiny_train_args(image_folder, tracking))
    # The server check gives up after 10 s; the rest is interpreter start-up and imports, which
    # take several seconds on a loaded 2-core machine. MLflow's own retries would take minutes.
    assert time.monotonic() - started < 25
    assert_one_line_error(result, "tracking server", "unreachable", "MLFLOW_TRACKING_URI")


def test_cuda_without_a_gpu(image_folder, tracking):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    result = cifar_mlflow(*tiny_train_args(image_folder, tracking, "--device", "cuda"))
    assert_one_line_error(result, "--device cuda", "--device cpu")
    assert_no_runs(tracking)


def test_a_data_path_that_is_a_file_is_one_line(tmp_path, tracking):
    data = tmp_path / "cifar.tar.gz"
    data.write_bytes(b"not a folder")
    result = cifar_mlflow(*tiny_train_args(data, tracking))
    assert_one_line_error(result, f"data directory {data} is a file, not a folder")
    assert_no_runs(tracking)


def test_a_compare_output_dir_that_cannot_be_written_is_one_line(tmp_path, tracking):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = cifar_mlflow("compare", "--experiment", tracking, "--output-dir",
                          str(blocker / "report"))  # fmt: skip
    assert_one_line_error(result, f"cannot write --output-dir {blocker / 'report'}",
                          "choose a folder you can write")  # fmt: skip
    assert_no_runs(tracking)


@pytest.mark.parametrize("storage, fragments", [
    ("{blocker}/study.db", ["--storage's folder {blocker} is a file, not a folder"]),
    ("postgresql://tuner:s3cret-pw@127.0.0.1:1/studies",
     ["cannot open the study storage postgresql://127.0.0.1:1/studies"]),
])  # fmt: skip
def test_a_tune_storage_that_cannot_be_written_or_opened_is_one_line(
    storage, fragments, tmp_path, image_folder, tracking
):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = cifar_mlflow("tune", "--experiment", tracking, "--data-dir", str(image_folder),
                          "--storage", storage.format(blocker=blocker))  # fmt: skip
    assert_one_line_error(result, *(f.format(blocker=blocker) for f in fragments))
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert_no_runs(tracking)
