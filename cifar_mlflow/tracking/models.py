"""Models in MLflow: a run's checkpoints logged as LoggedModels (`best`, `final`) with their
epoch's metrics linked to them, and any logged or registered model loaded back.

Format pt2 (torch.export): the file holds the graph and the weights and no pickle, so a site
that sets MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false still loads it, where cifar_mlflow is not
installed. `mlflow.pytorch.load_model` gives a torch.fx GraphModule with our parameter names.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import torch
import yaml
from mlflow.entities import LoggedModel, LoggedModelOutput, Metric
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient

from ..core.errors import UserError
from .datasets import dataset_name, metric_split


def log_checkpoint(
    name: str,
    model: torch.nn.Module,
    epoch: int,
    classes: tuple[str, ...],
    example_images: np.ndarray,
    digests: Mapping[str, str | None] | None = None,
) -> str:
    """Log `model` (taking float RGB in [0, 1], N x 3 x 32 x 32) as the active run's LoggedModel
    `name` at step = `epoch`, with the run's metrics of that step linked to it (so `best` shows
    its epoch's val_acc and test_acc), each `val_*` and `test_*` one with the dataset it was
    measured on (`digests`: split -> digest). The class names go in its metadata. Returns the
    model's id; the run's tag `<name>_model_id` names it too, and `model_uri` the last one."""
    run_id = mlflow.active_run().info.run_id
    client = MlflowClient()
    created = mlflow.initialize_logged_model(
        name=name, source_run_id=run_id, tags={"checkpoint": name, "epoch": str(epoch)},
        params=client.get_run(run_id).data.params,
    )  # fmt: skip
    # Stored from a thread where the run is not active (MLflow's active run is per thread), so
    # that MLflow does not link the run's metrics to it: it would link them without their
    # datasets (a run's metric history keeps none), and a model's metric is linked once.
    with ThreadPoolExecutor(1, thread_name_prefix="log-model") as pool:
        info = pool.submit(_store_model, created, model, epoch, classes, example_images).result()
    client.log_outputs(run_id, [LoggedModelOutput(created.model_id, step=epoch)])
    _link_metrics(client, run_id, created.model_id, epoch, digests or {})
    # The run's `model_uri` names the model to use: logged last, `best` when there is one.
    mlflow.set_tags({f"{name}_model_id": info.model_id, "model_uri": info.model_uri})
    return info.model_id


def _store_model(created: LoggedModel, model: torch.nn.Module, epoch: int,
                 classes: tuple[str, ...], example_images: np.ndarray) -> ModelInfo:  # fmt: skip
    # Saved in the standard memory layout: the engine trains in channels_last, whose weights
    # torch.export's archive stores as slices of a larger storage (it warns so, once per weight).
    model = model.cpu().to(memory_format=torch.contiguous_format).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(example_images)).numpy()
    return mlflow.pytorch.log_model(
        model,
        name=created.name,
        model_id=created.model_id,
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
    )


def _link_metrics(client: MlflowClient, run_id: str, model_id: str, step: int,
                  digests: Mapping[str, str | None]) -> None:  # fmt: skip
    """The run's metrics of `step` linked to the model, as MLflow links them, plus the dataset of
    each that was measured on a split whose digest is known. Their timestamps are the run's own,
    so the run's history gains no rows."""
    linked = []
    for key in client.get_run(run_id).data.metrics:
        split = metric_split(key)
        dataset = ({"dataset_name": dataset_name(split), "dataset_digest": digests[split]}
                   if digests.get(split) else {})  # fmt: skip
        linked += [Metric(key, m.value, m.timestamp, m.step, model_id=model_id, run_id=run_id,
                          **dataset)
                   for m in client.get_metric_history(run_id, key) if m.step == step]  # fmt: skip
    client.log_batch(run_id, metrics=linked)


def log_model_scores(model: LoggedModel, scores: Mapping[str, float], split: str,
                     digest: str | None) -> None:  # fmt: skip
    """Scores measured after training (an export's evaluation) linked to the LoggedModel `model`
    and to the split they were measured on: logged into the model's run at the model's step
    (its epoch), where the run's own metrics of that epoch are, so the model's page in the UI
    lists them together."""
    epoch = int(model.tags.get("epoch", 0))
    now = int(time.time() * 1000)
    dataset = {"dataset_name": dataset_name(split), "dataset_digest": digest} if digest else {}
    metrics = [Metric(k, float(v), now, epoch, model_id=model.model_id, **dataset)
               for k, v in scores.items()]  # fmt: skip
    MlflowClient().log_batch(model.source_run_id, metrics=metrics)


def model_classes(model_uri: str) -> tuple[str, ...] | None:
    """The class names a model was logged with (None for a model logged without them)."""
    try:
        metadata = mlflow.models.get_model_info(model_uri).metadata or {}
    except (MlflowException, OSError):
        return None
    return tuple(metadata["classes"]) if "classes" in metadata else None


class ModelNotLoaded(UserError):
    """A model URI that does not lead to a loadable model; the message gives MLflow's reason."""


class ModelRefused(ModelNotLoaded):
    """A model whose files could run code when loaded: refused, not loaded."""


def load_model(model_uri: str) -> torch.nn.Module:
    """The PyTorch module behind a logged or registered model, on the CPU. Models we log are pt2,
    so loading refuses what could run code: a model in pickle format (`model.pth`), one that
    brings code of its own, and a pt2 archive with a pickle in it (MLflow's own check, with
    MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false in this process whatever the environment says).
    Anything else that fails is one line: the model's files come from the server, so anything
    may be in them."""
    try:
        local = Path(mlflow.artifacts.download_artifacts(model_uri))
        refusal = _unsafe_files(local)
        if refusal:
            raise ModelRefused(f"refused model {model_uri}: {refusal}, which could run code "
                               "when loaded, so it was not loaded; log it again in pt2 format "
                               "(cifar-mlflow train does)")  # fmt: skip
        with _pickle_refused():
            return mlflow.pytorch.load_model(str(local), map_location="cpu")
    except ModelNotLoaded:
        raise
    except Exception as e:  # MLflow's, torch's, zipfile's and the OS's errors alike
        message = getattr(e, "message", str(e)).strip() or type(e).__name__
        pickled = PICKLE_REFUSED.search(message)
        if pickled:
            raise ModelRefused(
                f"refused model {model_uri}: its pt2 archive holds a pickle ({pickled[1]}), "
                "which could run code when loaded, so it was not loaded; log it again with "
                "cifar-mlflow train"
            ) from None
        raise ModelNotLoaded(f"cannot load model {model_uri}: "
                             f"{message.splitlines()[0].rstrip('.')}") from None  # fmt: skip


# MLflow's refusal of a pt2 archive record that is not pickle-free, naming the record.
PICKLE_REFUSED = re.compile(r"pickle is disallowed, but record '([^']*)'")


def _unsafe_files(model_dir: Path) -> str | None:
    """What, in a downloaded model, MLflow would import or unpickle before any check of its own:
    the module `pickle_module_info.txt` names, the model's `code` folder put on sys.path, a
    pickled `model.pth`; None for a model without them."""
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        return None  # not a model: MLflow says so
    flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("pytorch") or {}
    if flavor.get("code"):
        return f"it brings code of its own ({flavor['code']})"
    data = model_dir / str(flavor.get("model_data", "data"))
    pickled = [p.name for p in (data / "model.pth", data / "pickle_module_info.txt") if p.exists()]
    return f"it is in pickle format ({', '.join(pickled)})" if pickled else None


@contextlib.contextmanager
def _pickle_refused() -> Iterator[None]:
    name = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
