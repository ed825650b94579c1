"""`cifar-mlflow export`: register the best run of a model family as the champion, export it for
deployment, and re-evaluate it, all recorded in an MLflow run of its own.

Order matters for failures: everything that can fail on bad input or a bad model (loading the
data, choosing the run, loading its model, exporting and checking the files, evaluating) happens
before the registry is touched, so an error leaves nothing registered. The export run comes last and holds
the TorchScript and ONNX files, model_info.json and the evaluation.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from . import tracking
from .champion import (
    DEFAULT_ALIAS,
    DEFAULT_MODEL,
    Candidate,
    ChampionError,
    Registration,
    check_alias,
    choose_best_run,
    register_champion,
    registered_name,
)
from .cli import NON_NEGATIVE_INT, _choice
from .config import DEFAULT_EXPERIMENT, DEFAULTS
from .data import Cifar10, as_model_input, load_cifar10
from .deployment import ExportedFiles, export_and_verify, logits_of, model_info, write_model_info
from .evaluation import Evaluation, evaluate
from .models import MODELS

CHECK_IMAGES = 256  # test images each exported file is checked on


@dataclass(frozen=True)
class ExportConfig:
    model: str = DEFAULT_MODEL
    experiment: str = DEFAULT_EXPERIMENT
    metric: str = ""  # "": best_val_acc when every candidate run logs it, else best_test_acc
    filter: str = ""  # an MLflow search filter ANDed with the family and FINISHED conditions
    name: str = ""  # "": cifar10-<model>
    alias: str = DEFAULT_ALIAS
    data_dir: str = DEFAULTS.data_dir
    test_limit: int = DEFAULTS.test_limit

    @property
    def registered_name(self) -> str:
        return self.name or registered_name(self.model)


@dataclass(frozen=True)
class ExportResult:
    candidate: Candidate
    registration: Registration
    files: ExportedFiles
    evaluation: Evaluation
    training_test_acc: float | None  # None when training was scored on other images
    run_id: str  # the export run


def export_champion(config: ExportConfig, report: Callable[[str], None] = print) -> ExportResult:
    tracking.connect()
    check_alias(config.alias)
    data = load_cifar10(config.data_dir, test_limit=config.test_limit)
    candidate = choose_best_run(config.experiment, config.model, config.metric, config.filter)
    report(f"best of {candidate.qualifying_runs} qualifying {config.model} run(s): "
           f"{candidate.run_id} ({candidate.run.info.run_name}), "
           f"{candidate.metric} {candidate.value:.4f}")  # fmt: skip
    model = _load_model(candidate)
    inputs = as_model_input(data.test.images)

    with tempfile.TemporaryDirectory(prefix="cifar-mlflow-export-") as tmp:
        folder = Path(tmp)
        files = export_and_verify(model, inputs[:CHECK_IMAGES], folder)
        report(f"TorchScript and ONNX exports match the model on {min(len(inputs), CHECK_IMAGES)} "
               f"test images (max |logit diff| {files.torchscript_max_diff:.1e} and "
               f"{files.onnx_max_diff:.1e})")  # fmt: skip
        scores = evaluate(data.test.labels, logits_of(model, inputs).argmax(1), data.classes)
        trained = check_agreement(candidate, data, scores)
        registration = register_champion(candidate, config.registered_name, config.alias)
        report(f"{'registered' if registration.created else 'already registered:'} "
               f"{registration.name} version {registration.version}, alias {registration.alias}")  # fmt: skip
        source = {"registered_model": registration.name, "version": registration.version,
                  "alias": registration.alias, "run_id": candidate.run_id}  # fmt: skip
        write_model_info(model_info(model, data.classes, source), folder)
        run_id = log_export(candidate, registration, files, scores, trained, data, folder)
    return ExportResult(candidate, registration, files, scores, trained, run_id)


def _load_model(candidate: Candidate):
    try:
        return mlflow.pytorch.load_model(candidate.model_uri, map_location="cpu")
    except (MlflowException, OSError) as e:
        message = getattr(e, "message", str(e))
        raise ChampionError(
            f"cannot load the model of run {candidate.run_id} ({candidate.model_uri}): {message}"
        ) from None


def training_test_acc(candidate: Candidate, data: Cifar10) -> float | None:
    """The final test accuracy training logged, when it was measured on these very images (the
    logged model is the last epoch's, so the last test_acc is the one to compare with)."""
    params = candidate.run.data.params
    same_images = params.get("data_source") == data.source and params.get("test_images") == str(
        len(data.test)
    )
    return candidate.run.data.metrics.get("test_acc") if same_images else None


def check_agreement(candidate: Candidate, data: Cifar10, scores: Evaluation) -> float | None:
    """Fail when the re-evaluated accuracy is not training's on the same images.

    Training scores with DeviceBatches' normalisation, the logged model with Normalized's; the
    rounding differs by ~1e-7, which can flip a near-tie, so one image of slack. Training that
    evaluated in bf16 (CUDA) is not held to it: bf16 rounding moves more predictions.
    """
    trained = training_test_acc(candidate, data)
    fp32 = candidate.run.data.params.get("precision_used", "fp32") == "fp32"
    if trained is not None and fp32 and abs(scores.accuracy - trained) > 1.5 / len(data.test):
        raise ChampionError(
            f"run {candidate.run_id} logged test_acc {trained:.4f} but its model scores "
            f"{scores.accuracy:.4f} on the same {len(data.test)} images: did the files in "
            "--data-dir change since training? nothing was registered"
        )
    return trained


def log_export(
    candidate: Candidate,
    registration: Registration,
    files: ExportedFiles,
    scores: Evaluation,
    trained: float | None,
    data: Cifar10,
    folder: Path,
) -> str:
    """Record the export in its own run (the one `mlflow run` opened, if any) in the
    experiment the champion came from; the model version is tagged with it."""
    name = f"export-{registration.name}-v{registration.version}"
    with mlflow.start_run(experiment_id=candidate.run.info.experiment_id, run_name=name) as run:
        mlflow.set_tags({
            "export_of": candidate.run_id, "registered_model": registration.name,
            "model_version": registration.version, "alias": registration.alias,
        })  # fmt: skip
        mlflow.log_params({
            "source_run_id": candidate.run_id, "selection_metric": candidate.metric,
            "data_source": data.source, "test_images": len(data.test),
        })  # fmt: skip
        metrics = {
            **scores.summary_metrics(),
            "selection_value": candidate.value,
            "torchscript_max_abs_diff": files.torchscript_max_diff,
            "onnx_max_abs_diff": files.onnx_max_diff,
        }
        if trained is not None:
            metrics["training_test_acc"] = trained
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(folder), "deployment")
        mlflow.log_figure(scores.confusion_figure(), "evaluation/confusion_matrix.png")
        mlflow.log_table(scores.per_class_table(), "evaluation/per_class_metrics.json")
    MlflowClient().set_model_version_tag(
        registration.name, registration.version, "export_run_id", run.info.run_id
    )
    return run.info.run_id


@click.command()
@click.option("--model", type=_choice(MODELS), default=ExportConfig.model, show_default=True,
              help="model family whose best run becomes the champion")  # fmt: skip
@click.option("--experiment", default=ExportConfig.experiment, show_default=True,
              help="MLflow experiment holding the training runs")  # fmt: skip
@click.option("--metric", default=ExportConfig.metric,
              help="run metric to rank by, higher is better [default: best_val_acc when every "
                   "candidate run logs it, else best_test_acc]")  # fmt: skip
@click.option("--filter", "filter", default=ExportConfig.filter,
              help="extra MLflow run filter, e.g. \"params.optimizer = 'adam'\"")  # fmt: skip
@click.option("--name", default=ExportConfig.name,
              help="registered model name [default: cifar10-<model>]")  # fmt: skip
@click.option("--alias", default=ExportConfig.alias, show_default=True,
              help="alias set on the champion's model version")  # fmt: skip
@click.option("--data-dir", default=ExportConfig.data_dir, show_default=True,
              help="CIFAR-10 to re-evaluate on, as for train")  # fmt: skip
@click.option("--test-limit", type=NON_NEGATIVE_INT, default=ExportConfig.test_limit,
              show_default=True, help="keep the first N/10 test images of each class (0: all)")  # fmt: skip
def command(**options) -> None:
    """Register the best run of a model family, export it (TorchScript, ONNX) and evaluate it."""
    config = ExportConfig(**options)
    result = export_champion(config, report=lambda line: click.echo(line, err=True))
    scores = result.evaluation
    agreement = ""
    if result.training_test_acc is not None:
        agreement = f" (training logged {result.training_test_acc:.4f})"
    click.echo(f"test accuracy {scores.accuracy:.4f} on {scores.num_images} images{agreement}, "
               f"macro F1 {scores.summary_metrics()['macro_f1']:.4f}")  # fmt: skip
    click.echo(f"export run {result.run_id}: deployment/ and evaluation/ artifacts")
    click.echo(f'load it: mlflow.pytorch.load_model("{result.registration.uri}")')
