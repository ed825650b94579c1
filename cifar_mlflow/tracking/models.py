"""Models in MLflow: a run's checkpoints logged as LoggedModels (`best`, `final`) with their
epoch's metrics linked to them, and any logged or registered model loaded back.

Format pt2 (torch.export): the file holds the graph and the weights and no pickle, so a site
that sets MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false still loads it, where cifar_mlflow is not
installed. `mlflow.pytorch.load_model` gives a torch.fx GraphModule with our parameter names.
"""

from __future__ import annotations

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from ..core.errors import UserError


def log_checkpoint(
    name: str,
    model: torch.nn.Module,
    epoch: int,
    classes: tuple[str, ...],
    example_images: np.ndarray,
) -> str:
    """Log `model` (taking float RGB in [0, 1], N x 3 x 32 x 32) as the active run's LoggedModel
    `name` at step = `epoch`; MLflow links the run's metrics of that step to it (so `best` shows
    its epoch's val_acc and test_acc). The class names go in its metadata. Returns the model's
    id; the run's tag `<name>_model_id` names it too, and `model_uri` the last one logged."""
    model = model.cpu().eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(example_images)).numpy()
    info = mlflow.pytorch.log_model(
        model,
        name=name,
        step=epoch,
        serialization_format="pt2",
        signature=infer_signature(example_images, logits),
        input_example=example_images,
        # Explicit: inferring them costs ~15-20 s.
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"mlflow=={mlflow.__version__}",
        ],
        metadata={"classes": list(classes), "epoch": epoch},
        # MLflow would load the model back to predict the input example: 1.2-1.6 s of each
        # model's ~2.7 s here (bench/bench_model_logging.py). Every format we log is loaded and
        # served in tests/test_train.py and tests/test_export.py instead.
        validate_serving_input=False,
        tags={"checkpoint": name, "epoch": str(epoch)},
    )
    # The run's `model_uri` names the model to use: logged last, `best` when there is one.
    mlflow.set_tags({f"{name}_model_id": info.model_id, "model_uri": info.model_uri})
    return info.model_id


def model_classes(model_uri: str) -> tuple[str, ...] | None:
    """The class names a model was logged with (None for a model logged without them)."""
    try:
        metadata = mlflow.models.get_model_info(model_uri).metadata or {}
    except (MlflowException, OSError):
        return None
    return tuple(metadata["classes"]) if "classes" in metadata else None


class ModelNotLoaded(UserError):
    """A model URI that does not lead to a loadable model; the message gives MLflow's reason."""


def load_model(model_uri: str) -> torch.nn.Module:
    """The PyTorch module behind a logged or registered model, on the CPU."""
    try:
        return mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except (MlflowException, OSError) as e:
        message = getattr(e, "message", str(e)).strip().splitlines()[0].rstrip(".")
        raise ModelNotLoaded(f"cannot load model {model_uri}: {message}") from None
