"""A sweep's configurations as Ray Tune trials, on a local Ray or a cluster: the session, the
GPUs a trial asks for, and the trials' events told to the driver (a tune's trials use the same).

Each trial runs `executors.launch` on its Ray worker: the same child `train` process as the local
executor, reporting its epochs and then its Outcome as Tune results, so a failed configuration is
one FAILED run and the others go on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, fields
from typing import Protocol

from ..core.errors import UserError
from ..train.events import as_dict, from_dict
from .cluster import record_node, runtime_env
from .executors import Launch, Observer, Outcome, launch, settle, sharing_device

RAY_CONNECT_SECONDS = 5.0


def run_ray(
    launches: Sequence[Launch], observer: Observer, cpus: float, gpus: float,
    parallel: int | None, name: str,
) -> dict[int, Outcome]:  # fmt: skip
    """Each configuration a trial of Ray Tune's grid search with its own resources, in the Ray
    session `ray_session` opened. A failed trial is one FAILED run; the others go on."""
    _, tune = import_ray()
    # Trials that share a GPU: as many as fit its fractions; on CPUs, as many as run at once
    # where --parallel says so (else Ray decides, unknown here: 1).
    sharing = min(len(launches), int(1 / gpus + 1e-9) if gpus else parallel or 1)
    by_index = {spec.index: sharing_device(spec, sharing) for spec in launches}
    trials = SweepTrials(observer)
    fit_trials(
        tune.with_parameters(_trial, launches=by_index), {"cpu": cpus, "gpu": gpus},
        tune.TuneConfig(max_concurrent_trials=parallel or 0), trials, name,
        param_space={"index": tune.grid_search(list(by_index))},
    )  # fmt: skip
    outcomes = dict(trials.outcomes)
    for index in set(by_index) - set(outcomes):  # the trial itself died: settle its run here
        outcomes[index] = settle(by_index[index], None, trials.errors.get(index, []), 0.0)
        observer.finished(index, outcomes[index])
    return outcomes


class TrialObserver(Protocol):
    """What the driver hears of Ray Tune's trials (the events of a tune.Callback)."""

    def started(self, trial) -> None: ...
    def result(self, trial, result: Mapping[str, object]) -> None: ...
    def complete(self, trial) -> None: ...
    def error(self, trial) -> None: ...


def fit_trials(trainable, resources: Mapping[str, float], tune_config, observer: TrialObserver,
               name: str, param_space: Mapping | None = None) -> None:  # fmt: skip
    """Run Ray Tune trials of `trainable` in the Ray session `ray_session` opened, each trial's
    events told to `observer`, which prints our own lines: Tune's progress tables are off (its
    older output engine, unlike the newer one, prints nothing at verbose=0), and its records of
    the trials are not kept (MLflow holds everything about them)."""
    _, tune = import_ray()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    with tempfile.TemporaryDirectory(prefix="cifar-mlflow-ray-") as storage:
        tune.Tuner(
            tune.with_resources(trainable, dict(resources)),
            param_space=dict(param_space or {}),
            tune_config=tune_config,
            run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0,
                                      callbacks=[_trial_events(tune, observer)]),
        ).fit()  # fmt: skip


def _trial_events(tune, observer: TrialObserver):
    """A Tune callback (its class is made once Ray is imported) that tells `observer`."""

    class TrialEvents(tune.Callback):
        def __init__(self, observer: TrialObserver):
            self.observer = observer

        def __getstate__(self):
            # Tune pickles its run config to save the experiment (ours is never restored); the
            # observer (a lock, a terminal) stays with this live callback.
            return {"observer": None}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.observer.started(trial)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.observer.result(trial, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.observer.complete(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.observer.error(trial)

    return TrialEvents(observer)


class SweepTrials:
    """The sweep's configurations as Tune trials: their progress to the board, and how each
    ended (the trial's last result holds its Outcome; a trial that died has an error file)."""

    def __init__(self, observer: Observer):
        self.observer = observer
        self.outcomes: dict[int, Outcome] = {}
        self.errors: dict[int, list[str]] = {}

    def started(self, trial) -> None:
        self.observer.started(trial.config["index"])

    def result(self, trial, result: Mapping[str, object]) -> None:
        index = trial.config["index"]
        if "outcome_status" in result:
            outcome = Outcome(**{f.name: result[f"outcome_{f.name}"] for f in fields(Outcome)})
            self.outcomes[index] = outcome
            self.observer.finished(index, outcome)
        elif (event := from_dict(result)) is not None:
            self.observer.progress(index, event)

    def complete(self, trial) -> None:
        pass  # its outcome came with its last result

    def error(self, trial) -> None:
        self.errors[trial.config["index"]] = [
            f"Ray trial {trial.trial_id} failed: see {trial.error_file}"
        ]


def import_ray():
    try:
        import ray
        from ray import tune
    except ImportError:
        raise UserError(
            '--executor ray needs Ray: pip install -e ".[ray]" (or pip install "ray[tune]")'
        ) from None
    return ray, tune


def check_ray_address(address: str | None) -> None:
    """Fail within seconds where Ray is missing or the cluster cannot be reached: ray.init
    retries an unreachable address for minutes."""
    import_ray()
    if address and address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), RAY_CONNECT_SECONDS).close()
        except (OSError, ValueError) as e:
            raise UserError(
                f"Ray cluster {address} is unreachable ({type(e).__name__}): start it with "
                "`ray start --head` or give its address (host:port, ray://host:10001, auto)"
            ) from None


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Join the cluster at `address`, or start a local Ray instance for the sweep ("local": not
    one that `ray start` left running here). The trials get this package from the driver."""
    ray, _ = import_ray()
    check_ray_address(address)
    try:
        ray.init(address=address or "local", runtime_env=runtime_env(), include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING)  # fmt: skip
    except ConnectionError as e:
        raise UserError(f"cannot join Ray at {address}: {str(e).splitlines()[0]}") from None
    try:
        yield
    finally:
        ray.shutdown()


def trial_gpus(requested: float | None, runs_per_gpu: int, devices: set[str]) -> float:
    """GPUs per trial: as requested, else 1/`runs_per_gpu` (Ray packs that many trials on a GPU)
    where the cluster has GPUs and the device may be one. Checked before anything starts: a
    trial asking for GPUs the cluster lacks waits forever."""
    ray, _ = import_ray()
    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    if "cuda" in devices and not cluster_gpus:
        raise UserError("--device cuda, but the Ray cluster has no GPUs: use --device auto or cpu")
    if requested is not None:
        if requested > cluster_gpus:
            raise UserError(
                f"--gpus-per-trial {requested:g}: the Ray cluster has {cluster_gpus:g} GPUs"
            )
        return requested
    return 1.0 / runs_per_gpu if cluster_gpus and devices - {"cpu"} else 0.0


def _trial(config: dict, launches: Mapping[int, Launch]) -> None:
    """A Ray Tune trial: train one configuration, reporting each epoch and then the outcome (as
    results, not an exception, so a failed configuration is one line, not a traceback)."""
    from ray import tune

    spec = launches[config["index"]]
    record_node(spec.env["MLFLOW_TRACKING_URI"], spec.run_id)
    # None is no value for a Tune result (val_acc without a validation split): left out.
    outcome = launch(
        spec, lambda event: tune.report({k: v for k, v in as_dict(event).items() if v is not None})
    )
    tune.report({f"outcome_{k}": v for k, v in asdict(outcome).items()})
