"""What `cifar-mlflow predict` does: the top classes of image files, from a logged or registered
model, or from a running `mlflow models serve` endpoint.

Images of any size and mode are read as RGB and resized to 32x32 the way the data loader does;
the model takes them as floats in [0, 1] and normalises inside. `--print-request` writes the JSON
body `mlflow models serve` expects, for curl.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import requests

from ..core.data import CLASSES, as_model_input, decode_image
from ..core.errors import UserError

SERVER_TIMEOUT_SECONDS = 60


class PredictError(UserError):
    """A model or server that cannot be used; the message says what to do."""


def read_images(paths: list[Path]) -> np.ndarray:
    """(N, 3, 32, 32) float32 in [0, 1]; an unreadable file raises a DataError naming it."""
    images = np.stack([decode_image(p) for p in paths]).transpose(0, 3, 1, 2)
    return as_model_input(np.ascontiguousarray(images))


def serving_request(images: np.ndarray) -> dict:
    """The body of a POST to `mlflow models serve`'s /invocations."""
    return {"inputs": images.tolist()}


def local_probabilities(model_uri: str, images: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """The model's class probabilities for `images`, and the class names it was logged with
    (CIFAR-10's for a model logged without them)."""
    # torch and MLflow load only here: --print-request and --server need neither (~3 s).
    from ..tracking import connection
    from ..tracking.models import ModelNotLoaded, ModelRefused, load_model, model_classes
    from .deployment import logits_of

    if model_uri.startswith(("models:/", "runs:/")):
        connection.connect()  # fails in ~10 s, not minutes, when the tracking server is away
    try:
        model = load_model(model_uri)
    except ModelRefused:
        raise
    except ModelNotLoaded as e:
        raise PredictError(
            f"{e}; list registered models and aliases in the MLflow UI, or run "
            "`cifar-mlflow export` to register a champion"
        ) from None
    return softmax(logits_of(model, images)), model_classes(model_uri) or CLASSES


def served_probabilities(server: str, images: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Each image's class probabilities from a running `mlflow models serve`, and the classes
    they are for: as named in its answer (a registered champion), or CIFAR-10's for a model
    that answers logits (a run's `best` or `final`)."""
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
    answers = response.json()["predictions"]
    if answers and isinstance(answers[0], dict):  # {"class": ..., "probability": ..., <class>: p}
        classes = tuple(c for c in CLASSES if c in answers[0]) or tuple(
            k for k in answers[0] if k not in ("class", "probability"))  # fmt: skip
        return np.asarray([[a[c] for c in classes] for a in answers], np.float32), classes
    return softmax(np.asarray(answers, dtype=np.float32)), CLASSES


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def top_classes(
    probabilities: np.ndarray, classes: tuple[str, ...], k: int
) -> list[list[tuple[str, float]]]:
    """For each image, its k most probable classes with their probabilities."""
    if probabilities.ndim != 2 or probabilities.shape[1] != len(classes):
        raise PredictError(
            f"the model returns {probabilities.shape[-1]} scores per image but CIFAR-10 has "
            f"{len(classes)} classes: point --model-uri at a cifar-mlflow model"
        )
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(classes[c], float(p[c])) for c in row] for p, row in zip(probabilities, order)]
