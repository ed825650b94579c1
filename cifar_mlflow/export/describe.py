"""What the export writes for people to read: its run's description, and the descriptions of
the registered model and of each version (what it is, how it was chosen, its figures, how to
load it), shown on the MLflow UI's model registry pages."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .champion import ON_TEST, Candidate

if TYPE_CHECKING:
    from ..tracking.registry import Registration
    from .evaluation import Evaluation

TEST_CHOICE = ("chosen on the TEST set: no run has a validation split, so its accuracy is "
               "optimistic (train with --val-size > 0 to choose on validation)")  # fmt: skip


def export_summary(candidate: Candidate, registration: Registration, scores: Evaluation,
                   trained: float | None) -> str:  # fmt: skip
    """The export run's description (its Overview in the MLflow UI), in markdown."""
    logged = f" (training logged {trained:.4f} for it)" if trained is not None else ""
    lines = [
        f"**{registration.name}** version {registration.version} (alias `{registration.alias}`)",
        (
            f"is checkpoint `{candidate.checkpoint.name}` (epoch {candidate.epoch}) of run "
            f"`{candidate.run_id}` ({candidate.run.info.run_name}),"
        ),
        (
            f"chosen on {candidate.chosen_on} {candidate.metric} = {candidate.value:.4f} among "
            f"{candidate.qualifying_runs} run(s)."
        ),
        "",
        f"Test accuracy on {scores.num_images} images: {scores.accuracy:.4f}{logged}.",
    ]
    if candidate.chosen_on == ON_TEST:
        lines += ["", f"**Warning**: {TEST_CHOICE}."]
    return "\n".join(lines)


def family_description(model: str, registration: Registration) -> str:
    """The registered model's description: what its versions are and how one is chosen."""
    return (
        f"CIFAR-10 `{model}` checkpoints registered by `cifar-mlflow export`. Each version is "
        "the `best` checkpoint (the epoch with the highest validation accuracy) of the run whose "
        "best validation accuracy was highest among the finished runs of the experiment when it "
        f"was exported; the test set chooses nothing. Alias `{registration.alias}` points at the "
        "current one. Each version's description says which run and epoch it is, its figures, "
        "and how to load it."
    )


def version_description(candidate: Candidate, registration: Registration, scores: Evaluation,
                        trained: float | None, export_run: str) -> str:  # fmt: skip
    """A version's description: where it came from, how it was chosen, its figures, and how
    to load and serve it."""
    uri = registration.uri
    params = candidate.run.data.params
    chosen = (f"the highest validation accuracy ({candidate.value:.4f}) among "
              f"{candidate.qualifying_runs} finished run(s)")  # fmt: skip
    if candidate.chosen_on == ON_TEST:
        chosen = f"the highest final test accuracy ({candidate.value:.4f}): {TEST_CHOICE}"
    agreed = f" (training logged {trained:.4f} for it)" if trained is not None else ""
    return "\n".join([
        f"Checkpoint `{candidate.checkpoint.name}` (epoch {candidate.epoch}) of run "
        f"`{candidate.run_id}` ({candidate.run.info.run_name}), chosen for {chosen}.",
        "",
        f"- Test accuracy {scores.accuracy:.4f} on {scores.num_images:,} images{agreed}, macro "
        f"F1 {scores.f1.mean():.4f}: reported, never used to choose.",
        f"- {int(float(params.get('model_params', 0))):,} parameters; data digest "
        f"`{params.get('data_digest', 'unknown')}`; exported by run `{export_run}`.",
        "",
        "Load it (pt2: no pickle, no cifar_mlflow needed). The module is already in eval mode; "
        "`.eval()` and `.train()` raise `NotImplementedError` on a torch.export module, so do "
        "not call them:",
        "",
        "```python",
        "import mlflow, torch",
        f'model = mlflow.pytorch.load_model("{uri}")',
        "with torch.no_grad():",
        "    logits = model(images)  # float RGB in [0, 1], shape (N, 3, 32, 32)",
        f'classes = mlflow.models.get_model_info("{uri}").metadata["classes"]',
        "```",
        "",
        f'Serve it: `mlflow models serve -m "{uri}" --env-manager local -p 5001`.',
    ])  # fmt: skip
