"""Models in MLflow: a trained model logged with its run, and any logged or registered model
loaded back."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from ..core.errors import UserError
from .training import PACKAGE_DIR


def log_trained_model(model: torch.nn.Module, example_images: np.ndarray) -> str:
    """Log `model` (taking float RGB in [0, 1], N x 3 x 32 x 32) and its state_dict to the
    active run; returns the model's URI, also set as the run's `model_uri` tag.

    Pickle format, so `mlflow.pytorch.load_model` returns our class, not pt2's GraphModule;
    explicit pip requirements, because inferring them costs ~15-20 s; the package source goes
    along in code_paths so the model loads where cifar_mlflow is not installed.
    """
    model = model.cpu().eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(example_images)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "model_state.pt"
        torch.save(model.state_dict(), checkpoint)
        mlflow.log_artifact(str(checkpoint), artifact_path="checkpoint")
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        serialization_format="pickle",
        signature=infer_signature(example_images, logits),
        input_example=example_images,
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"mlflow=={mlflow.__version__}",
        ],
        code_paths=[str(PACKAGE_DIR)],
    )
    mlflow.set_tag("model_uri", info.model_uri)
    return info.model_uri


class ModelNotLoaded(UserError):
    """A model URI that does not lead to a loadable model; the message gives MLflow's reason."""


def load_model(model_uri: str) -> torch.nn.Module:
    """The PyTorch module behind a logged or registered model, on the CPU."""
    try:
        return mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except (MlflowException, OSError) as e:
        message = getattr(e, "message", str(e)).strip().splitlines()[0].rstrip(".")
        raise ModelNotLoaded(f"cannot load model {model_uri}: {message}") from None
