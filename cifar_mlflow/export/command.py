"""The options of `cifar-mlflow export` and `cifar-mlflow predict`; their work (job.py,
predict.py) is imported when a command runs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..core.config import CLASSES, MODEL_NAMES
from ..options import EXPERIMENT_NAME, PER_CLASS_LIMIT, choice
from .config import DEFAULT_MODEL_URI, ExportConfig


@click.command()
@click.option("--model", type=choice(MODEL_NAMES), default=ExportConfig.model, show_default=True,
              help="model family whose best run becomes the champion")  # fmt: skip
@click.option("--experiment", type=EXPERIMENT_NAME, default=ExportConfig.experiment,
              show_default=True, help="MLflow experiment holding the training runs")  # fmt: skip
@click.option("--filter", "filter", default=ExportConfig.filter,
              help="extra MLflow run filter, e.g. \"params.optimizer = 'adam'\"")  # fmt: skip
@click.option("--name", default=ExportConfig.name,
              help="registered model name [default: cifar10-<model>]")  # fmt: skip
@click.option("--alias", default=ExportConfig.alias, show_default=True,
              help="alias set on the champion's model version")  # fmt: skip
@click.option("--data-dir", default=ExportConfig.data_dir,
              help="CIFAR-10 to re-evaluate on, as for train [default: the data the champion's "
                   "run trained on]")  # fmt: skip
@click.option("--test-limit", type=PER_CLASS_LIMIT, default=ExportConfig.test_limit,
              help="keep the first N/10 test images of each class; 0: all, else N >= 10 "
                   "[default: the champion run's]")  # fmt: skip
def export(**options) -> None:
    """Register the best checkpoint of a model family (the `best` model with the highest val_acc),
    export it (TorchScript, ONNX) and evaluate it on the test set."""
    from .job import export_champion

    result = export_champion(
        ExportConfig(**options), report=lambda line: click.echo(line, err=True)
    )
    scores = result.evaluation
    agreement = ""
    if result.training_test_acc is not None:
        agreement = f" (training logged {result.training_test_acc:.4f} for this checkpoint)"
    click.echo(f"test accuracy {scores.accuracy:.4f} on {scores.num_images} images{agreement}, "
               f"macro F1 {scores.summary_metrics()['macro_f1']:.4f}")  # fmt: skip
    click.echo(f"export run {result.run_id}: deployment/ and evaluation/ artifacts")
    click.echo(f'load it: mlflow.pytorch.load_model("{result.registration.uri}")')


@click.command()
@click.argument("images", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))  # fmt: skip
@click.option("--model-uri", default=DEFAULT_MODEL_URI, show_default=True,
              help="an MLflow model URI: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/model")  # fmt: skip
@click.option("--server", metavar="URL",
              help="ask a running `mlflow models serve` at URL instead of loading --model-uri")  # fmt: skip
@click.option("--top", type=click.IntRange(1, len(CLASSES)), default=3, show_default=True,
              help="classes shown per image")  # fmt: skip
@click.option("--print-request", is_flag=True,
              help="print the JSON body for POST URL/invocations and exit (for curl)")  # fmt: skip
def predict(images: tuple[Path, ...], model_uri: str, server: str | None, top: int,
            print_request: bool) -> None:  # fmt: skip
    """Print the most probable CIFAR-10 classes of each IMAGE (any size; resized to 32x32)."""
    from .predict import local_logits, read_images, served_logits, serving_request, top_classes

    inputs = read_images(list(images))
    if print_request:
        click.echo(json.dumps(serving_request(inputs)))
        return
    if server:  # a served model answers logits only: its classes are CIFAR-10's, in order
        logits, classes = served_logits(server, inputs), CLASSES
    else:
        logits, classes = local_logits(model_uri, inputs)
    for path, ranked in zip(images, top_classes(logits, classes, top)):
        click.echo(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in ranked))
