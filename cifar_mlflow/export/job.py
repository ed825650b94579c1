"""`cifar-mlflow export`'s work: register the best checkpoint of a model family as the champion
(champion.py says which), export it for deployment, and re-evaluate it on the data its run
trained on, all recorded in an export run of its own.

Order matters for failures: everything that can fail on bad input or a bad model (choosing the
checkpoint, loading the data, loading its model, exporting and checking the files, evaluating)
happens before the registry is touched, so an error leaves nothing registered. The export run comes last
and holds the TorchScript and ONNX files, model_info.json and the evaluation.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ..core.data import MEAN, STD, Cifar10, as_model_input, load_cifar10, source_folder
from ..core.models import Normalized, build_model
from ..tracking import connection, records, registry
from ..tracking.datasets import logged_digest, split_digest
from ..tracking.models import load_model, log_model_scores, model_classes
from ..tracking.registry import Registration
from ..tracking.runs import JOB_TAG, RunSpec, tracked_run
from ..tracking.serving import log_served_model
from .champion import ON_TEST, Candidate, ChampionError, choose_best_run
from .config import ExportConfig
from .deployment import ExportedFiles, export_and_verify, logits_of, model_info, write_model_info
from .describe import (
    TEST_CHOICE,
    export_summary,
    family_description,
    version_description,
)
from .evaluation import Evaluation, evaluate

if TYPE_CHECKING:
    from mlflow.entities import Run

CHECK_IMAGES = 256  # test images each exported file is checked on


@dataclass(frozen=True)
class ExportResult:
    candidate: Candidate
    registration: Registration
    files: ExportedFiles
    evaluation: Evaluation
    training_test_acc: float | None  # None when training was scored on other images
    run_id: str  # the export run


def export_champion(config: ExportConfig, report: Callable[[str], None]) -> ExportResult:
    connection.connect()
    registry.check_alias(config.alias)
    candidate = choose_best_run(config.experiment, config.model, config.filter)
    report(describe_choice(candidate))
    data = load_cifar10(data_dir_of(config, candidate), test_limit=test_limit_of(config, candidate))
    classes = model_classes(candidate.model_uri) or data.classes
    model = as_trained_module(load_model(candidate.model_uri), candidate.run, classes)
    inputs = as_model_input(data.test.images)

    with tempfile.TemporaryDirectory(prefix="cifar-mlflow-export-") as tmp:
        folder = Path(tmp)
        files = export_and_verify(model, inputs[:CHECK_IMAGES], folder)
        report(f"TorchScript and ONNX exports match the model on {min(len(inputs), CHECK_IMAGES)} "
               f"test images (max |logit diff| {files.torchscript_max_diff:.1e} and "
               f"{files.onnx_max_diff:.1e})")  # fmt: skip
        scores = evaluate(data.test.labels, logits_of(model, inputs).argmax(1), classes)
        trained = check_agreement(candidate, data, scores)
        registration = registry.register(
            candidate.checkpoint.model_id, candidate.run_id, config.registered_name,
            config.alias, candidate.version_tags(),
            lambda: log_served_model(model, candidate.run_id, candidate.epoch, classes,
                                     inputs[:2], {"checkpoint": candidate.checkpoint.name}),
        )  # fmt: skip
        report(f"{'registered' if registration.created else 'already registered:'} "
               f"{registration.name} version {registration.version}, alias {registration.alias}")  # fmt: skip
        source = {"registered_model": registration.name, "version": registration.version,
                  "alias": registration.alias, "run_id": candidate.run_id,
                  "checkpoint": candidate.checkpoint.name, "epoch": candidate.epoch}  # fmt: skip
        write_model_info(model_info(model, classes, source), folder)
        run_id = log_export(config, candidate, registration, files, scores, trained, data, folder)
    if trained is not None and registration.created:  # scored on the images training scored on
        log_model_scores(candidate.checkpoint, scores.model_scores(), "test",
                         logged_digest(candidate.run, "test"))  # fmt: skip
    registry.describe(registration, family_description(config.model, registration),
                      version_description(candidate, registration, scores, trained, run_id))  # fmt: skip
    return ExportResult(candidate, registration, files, scores, trained, run_id)


def describe_choice(candidate: Candidate) -> str:
    """The report's line on which checkpoint won and on what; a choice made on the test set
    says so."""
    line = (f"best of {candidate.qualifying_runs} qualifying run(s): {candidate.run_id} "
            f"({candidate.run.info.run_name}), checkpoint `{candidate.checkpoint.name}` of epoch "
            f"{candidate.epoch}, {candidate.metric} {candidate.value:.4f}")  # fmt: skip
    if candidate.left_out:
        line += f"; {candidate.left_out} run(s) without a validation split left out"
    if candidate.chosen_on == ON_TEST:
        line += f"; {TEST_CHOICE}"
    return line




def data_dir_of(config: ExportConfig, candidate: Candidate) -> str:
    """--data-dir, else the folder the champion's run read its images from."""
    if config.data_dir is not None:
        return config.data_dir
    folder = source_folder(candidate.run.data.params.get("data_source", ""))
    if not folder:
        raise ChampionError(f"run {candidate.run_id} logged no data_source: pass --data-dir")
    if not Path(folder).exists():
        raise ChampionError(
            f"run {candidate.run_id} trained on {folder}, which no longer exists: pass "
            "--data-dir with CIFAR-10's location"
        )
    return folder


def test_limit_of(config: ExportConfig, candidate: Candidate) -> int:
    if config.test_limit is not None:
        return config.test_limit
    return int(float(candidate.run.data.params.get("test_limit", "0")))


def as_trained_module(loaded: nn.Module, run: Run, classes: tuple[str, ...]) -> nn.Module:
    """The checkpoint's weights in our own model class. A pt2 model loads as a torch.fx
    GraphModule, which can neither switch to eval() nor be traced to TorchScript; its state dict
    has our parameter names, so our class takes it as it is (strict: every name must match)."""
    params = run.data.params
    module = Normalized(build_model(params["model"], params["activation"], len(classes)), MEAN, STD)
    module.load_state_dict(loaded.state_dict())
    return module.eval()


def check_agreement(candidate: Candidate, data: Cifar10, scores: Evaluation) -> float | None:
    """Fail when the re-evaluated accuracy is not the one training logged for this very
    checkpoint on the same images (the test split's digest says whether they are the same);
    returns that logged accuracy, or None when training was scored on other images.

    Training scores with DeviceBatches' normalisation, the logged model with Normalized's; the
    rounding differs by ~1e-7, which can flip a near-tie, so one image of slack. Training that
    evaluated in bf16 (CUDA) is not held to it: bf16 rounding moves more predictions.
    """
    if logged_digest(candidate.run, "test") != split_digest(data.test):
        return None
    trained = candidate.test_acc
    fp32 = candidate.run.data.params.get("precision_used", "fp32") == "fp32"
    if fp32 and abs(scores.accuracy - trained) > 1.5 / len(data.test):
        raise ChampionError(
            f"run {candidate.run_id} logged test_acc {trained:.4f} for its "
            f"`{candidate.checkpoint.name}` checkpoint but it scores {scores.accuracy:.4f} on "
            f"the same {len(data.test)} images: nothing was registered"
        )
    return trained


def log_export(
    config: ExportConfig,
    candidate: Candidate,
    registration: Registration,
    files: ExportedFiles,
    scores: Evaluation,
    trained: float | None,
    data: Cifar10,
    folder: Path,
) -> str:
    """Record the export in its own run (the one `mlflow run` opened, if any) in the experiment
    the champion came from; the model version is tagged with it."""
    spec = RunSpec(
        experiment=config.experiment,
        name=f"export-{registration.name}-v{registration.version}",
        tags={JOB_TAG: "export", "export_of": candidate.run_id,
              "registered_model": registration.name, "model_version": registration.version,
              "alias": registration.alias, "chosen_on": candidate.chosen_on,
              "mlflow.note.content": export_summary(candidate, registration, scores, trained)},
        params={"source_run_id": candidate.run_id, "source_model_id": candidate.checkpoint.model_id,
                "checkpoint": candidate.checkpoint.name, "checkpoint_epoch": candidate.epoch,
                "selection_metric": candidate.metric, "data_source": data.source,
                "test_images": len(data.test)},
    )  # fmt: skip
    # Tags, not metrics: the experiment's charts hold training metrics only. The evaluation is
    # linked to the checkpoint's LoggedModel too (log_model_scores).
    numbers = {
        **scores.summary_metrics(),
        f"selection_{candidate.metric}": candidate.value,
        "torchscript_max_abs_diff": files.torchscript_max_diff,
        "onnx_max_abs_diff": files.onnx_max_diff,
    }
    if trained is not None:
        numbers["training_logged_test_acc"] = trained
    with tracked_run(spec) as run_id:
        records.set_tags(run_id, {f"export.{k}": f"{v:.6g}" for k, v in numbers.items()})
        records.log_folder(run_id, folder, "deployment")
        records.log_figure(run_id, scores.confusion_figure(), "evaluation/confusion_matrix.png")
        records.log_table(run_id, scores.per_class_table(), "evaluation/per_class_metrics.json")
    registry.tag_version(registration, "export_run_id", run_id)
    return run_id
