"""The model the registry holds for a champion: a checkpoint that loads as PyTorch and serves
class names.

One MLflow model, two flavors. Its `pytorch` flavor is the checkpoint's pt2 program, as every
logged model of a run has: `mlflow.pytorch.load_model` gives the torch.export module, no pickle
and no code of ours. Its `python_function` flavor, what `mlflow models serve` and
`mlflow.pyfunc.load_model` use, is served_classifier.py (MLflow's models from code) over the
same program file: it answers each image's class, its probability and every class's
probability, named, instead of bare logits. This module is the flavor hook `Model.log` calls
(`save_model`), so the model is logged, linked to its run and registered like any other.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

CODE = Path(__file__).with_name("served_classifier.py")
PROGRAM = "data/model.pt2"  # where the pytorch flavor keeps the pt2 program
SERVED_NAME = "served"  # the LoggedModel's name, beside the run's `best` and `final`


def log_served_model(module: torch.nn.Module, run_id: str, epoch: int, classes: tuple[str, ...],
                     example: np.ndarray, tags: dict[str, str]) -> str:  # fmt: skip
    """Log `module` (float RGB in [0, 1] in, logits out) as run `run_id`'s LoggedModel `served`
    at step `epoch`; returns its model id."""
    info = Model.log(
        artifact_path=None, name=SERVED_NAME, flavor=sys.modules[__name__], run_id=run_id,
        step=epoch, tags=tags,
        metadata={"classes": list(classes), "epoch": epoch},
        module=module.cpu().to(memory_format=torch.contiguous_format).eval(), example=example,
        classes=classes, validate_serving_input=False,  # the tests serve it instead
    )  # fmt: skip
    return info.model_id


def save_model(path: str, mlflow_model: Model, module: torch.nn.Module, example: np.ndarray,
               classes: tuple[str, ...], **kwargs) -> None:  # fmt: skip
    """Model.log's flavor hook: the pytorch flavor first, then its python_function flavor
    replaced by served_classifier.py's predict over the same program file."""
    mlflow.pytorch.save_model(
        module, path, mlflow_model=mlflow_model, serialization_format="pt2",
        input_example=example,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                          f"mlflow=={mlflow.__version__}", "pandas", "numpy"],
    )  # fmt: skip
    shutil.copy(CODE, Path(path) / CODE.name)
    mlflow.pyfunc.add_to_model(
        mlflow_model, loader_module="mlflow.pyfunc.loaders.code_model",
        model_code_path=CODE.name, model_config={"classes": list(classes)},
        artifacts={"program": {"path": PROGRAM}},
        conda_env="conda.yaml", python_env="python_env.yaml",
    )  # fmt: skip
    mlflow_model.signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, 32, 32))]),
        outputs=Schema([ColSpec("string", "class"), ColSpec("double", "probability"),
                        *(ColSpec("double", name) for name in classes)]),
    )  # fmt: skip
    mlflow_model.save(str(Path(path) / "MLmodel"))
