"""One tracked training run: load the data, train, and record it all in MLflow.

Order matters for failures: the config is validated by the CLI, then the tracking server and the
data are checked, and only then is a run opened, so bad input never leaves a run behind.
"""

from __future__ import annotations

from collections.abc import Callable

from . import tracking
from .config import TrainConfig
from .data import MEAN, STD, as_model_input, load_cifar10
from .engine import BatchWrapper, EpochMetrics, Trainer, forward_flops, resolve_device
from .models import Normalized


def run_training(
    config: TrainConfig,
    on_epoch: Callable[[EpochMetrics], None] = lambda m: None,
    wrap: BatchWrapper | None = None,
    on_start: Callable[[str, dict], None] = lambda run_id, facts: None,
) -> str:
    """Train as `config` says and return the MLflow run id."""
    device = resolve_device(config.device)
    tracking.connect()
    data = load_cifar10(
        config.data_dir, config.train_limit, config.test_limit, config.val_size, config.seed
    )
    with tracking.training_run(config) as run:
        trainer = Trainer(config, data, device)
        facts = {
            "device": str(device),
            "precision_used": trainer.precision,
            "data_source": data.source,
            "train_images": len(data.train),
            "val_images": len(data.val) if data.val else 0,
            "test_images": len(data.test),
            "model_params": trainer.num_parameters,
            "model_flops": forward_flops(trainer.model, device),
        }
        tracking.log_setup(config, facts)
        on_start(run.info.run_id, facts)

        def record(metrics: EpochMetrics) -> None:
            tracking.log_epoch(metrics)
            on_epoch(metrics)

        result = trainer.fit(record, wrap)
        tracking.log_summary(result.history)
        tracking.log_trained_model(
            Normalized(result.model, MEAN, STD), as_model_input(data.test.images[:2])
        )
        return run.info.run_id

