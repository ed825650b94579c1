"""`cifar-mlflow predict`: the top classes of image files, from a logged or registered model, or
from a running `mlflow models serve` endpoint.

Images of any size and mode are read as RGB and resized to 32x32 the way the data loader does;
the model takes them as floats in [0, 1] and normalises inside. `--print-request` writes the JSON
body `mlflow models serve` expects, for curl.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from .champion import DEFAULT_ALIAS, DEFAULT_MODEL, registered_name
from .data import CLASSES, _decode_image, as_model_input
from .errors import UserError

DEFAULT_MODEL_URI = f"models:/{registered_name(DEFAULT_MODEL)}@{DEFAULT_ALIAS}"
SERVER_TIMEOUT_SECONDS = 60


class PredictError(UserError):
    """A model or server that cannot be used; the message says what to do."""


def read_images(paths: list[Path]) -> np.ndarray:
    """(N, 3, 32, 32) float32 in [0, 1]; an unreadable file raises a DataError naming it."""
    images = np.stack([_decode_image(p) for p in paths]).transpose(0, 3, 1, 2)
    return as_model_input(np.ascontiguousarray(images))


def serving_request(images: np.ndarray) -> dict:
    """The body of a POST to `mlflow models serve`'s /invocations."""
    return {"inputs": images.tolist()}


def local_logits(model_uri: str, images: np.ndarray) -> np.ndarray:
    import mlflow
    from mlflow.exceptions import MlflowException

    from . import tracking
    from .deployment import logits_of

    if model_uri.startswith(("models:/", "runs:/")):
        tracking.connect()  # fails in ~10 s, not minutes, when the tracking server is away
    try:
        model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except (MlflowException, OSError) as e:
        message = getattr(e, "message", str(e)).splitlines()[0].rstrip(".")
        raise PredictError(
            f"cannot load model {model_uri}: {message}; list registered models and aliases in "
            "the MLflow UI, or run `cifar-mlflow export` to register a champion"
        ) from None
    return logits_of(model, images)


def served_logits(server: str, images: np.ndarray) -> np.ndarray:
    import requests

    url = f"{server.rstrip('/')}/invocations"
    try:
        response = requests.post(url, json=serving_request(images), timeout=SERVER_TIMEOUT_SECONDS)
    except requests.RequestException as e:
        raise PredictError(
            f"model server {server} is unreachable ({type(e).__name__}): start it with "
            "`mlflow models serve -m MODEL_URI --env-manager local -p PORT` or fix --server"
        ) from None
    if not response.ok:
        raise PredictError(f"model server {url} answered HTTP {response.status_code}: "
                           f"{response.text.strip()[:300]}")  # fmt: skip
    return np.asarray(response.json()["predictions"], dtype=np.float32)


def top_classes(
    logits: np.ndarray, classes: tuple[str, ...], k: int
) -> list[list[tuple[str, float]]]:
    """For each image, its k most probable classes with their softmax probabilities."""
    if logits.ndim != 2 or logits.shape[1] != len(classes):
        raise PredictError(
            f"the model returns {logits.shape[-1]} scores per image but CIFAR-10 has "
            f"{len(classes)} classes: point --model-uri at a cifar-mlflow model"
        )
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(classes[c], float(p[c])) for c in row] for p, row in zip(probabilities, order)]


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
def command(images: tuple[Path, ...], model_uri: str, server: str | None, top: int,
            print_request: bool) -> None:  # fmt: skip
    """Print the most probable CIFAR-10 classes of each IMAGE (any size; resized to 32x32)."""
    inputs = read_images(list(images))
    if print_request:
        click.echo(json.dumps(serving_request(inputs)))
        return
    logits = served_logits(server, inputs) if server else local_logits(model_uri, inputs)
    for path, ranked in zip(images, top_classes(logits, CLASSES, top)):
        click.echo(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in ranked))
