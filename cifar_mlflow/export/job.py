"""`cifar-mlflow export`'s work: register the best run of a model family as the champion, export
it for deployment, and re-evaluate it, all recorded in an export run of its own.

Order matters for failures: everything that can fail on bad input or a bad model (loading the
data, choosing the run, loading its model, exporting and checking the files, evaluating) happens
before the registry is touched, so an error leaves nothing registered. The export run comes last
and holds the TorchScript and ONNX files, model_info.json and the evaluation.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.data import Cifar10, as_model_input, load_cifar10
from ..tracking import connection, records, registry
from ..tracking.models import load_model
from ..tracking.registry import Registration
from ..tracking.runs import JOB_TAG, RunSpec, tracked_run
from .champion import Candidate, ChampionError, choose_best_run
from .config import ExportConfig
from .deployment import ExportedFiles, export_and_verify, logits_of, model_info, write_model_info
from .evaluation import Evaluation, evaluate

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
    data = load_cifar10(config.data_dir, test_limit=config.test_limit)
    candidate = choose_best_run(config.experiment, config.model, config.metric, config.filter)
    report(f"best of {candidate.qualifying_runs} qualifying {config.model} run(s): "
           f"{candidate.run_id} ({candidate.run.info.run_name}), "
           f"{candidate.metric} {candidate.value:.4f}")  # fmt: skip
    model = load_model(candidate.model_uri)
    inputs = as_model_input(data.test.images)

    with tempfile.TemporaryDirectory(prefix="cifar-mlflow-export-") as tmp:
        folder = Path(tmp)
        files = export_and_verify(model, inputs[:CHECK_IMAGES], folder)
        report(f"TorchScript and ONNX exports match the model on {min(len(inputs), CHECK_IMAGES)} "
               f"test images (max |logit diff| {files.torchscript_max_diff:.1e} and "
               f"{files.onnx_max_diff:.1e})")  # fmt: skip
        scores = evaluate(data.test.labels, logits_of(model, inputs).argmax(1), data.classes)
        trained = check_agreement(candidate, data, scores)
        registration = registry.register(candidate.model_uri, candidate.run_id,
                                         config.registered_name, config.alias,
                                         candidate.version_tags())  # fmt: skip
        report(f"{'registered' if registration.created else 'already registered:'} "
               f"{registration.name} version {registration.version}, alias {registration.alias}")  # fmt: skip
        source = {"registered_model": registration.name, "version": registration.version,
                  "alias": registration.alias, "run_id": candidate.run_id}  # fmt: skip
        write_model_info(model_info(model, data.classes, source), folder)
        run_id = log_export(config, candidate, registration, files, scores, trained, data, folder)
    return ExportResult(candidate, registration, files, scores, trained, run_id)


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
              "alias": registration.alias},
        params={"source_run_id": candidate.run_id, "selection_metric": candidate.metric,
                "data_source": data.source, "test_images": len(data.test)},
    )  # fmt: skip
    metrics = {
        **scores.summary_metrics(),
        "selection_value": candidate.value,
        "torchscript_max_abs_diff": files.torchscript_max_diff,
        "onnx_max_abs_diff": files.onnx_max_diff,
    }
    if trained is not None:
        metrics["training_test_acc"] = trained
    with tracked_run(spec) as run_id:
        records.log_metrics(run_id, metrics)
        records.log_folder(run_id, folder, "deployment")
        records.log_figure(run_id, scores.confusion_figure(), "evaluation/confusion_matrix.png")
        records.log_table(run_id, scores.per_class_table(), "evaluation/per_class_metrics.json")
    registry.tag_version(registration, "export_run_id", run_id)
    return run_id
