"""Where a sweep's configurations train: one `cifar-mlflow train` process each, here or on Ray.

Every configuration is a child process logging into a run the sweep created for it
(MLFLOW_RUN_ID), so a crash, an out-of-memory kill or a bad config ends that run only. The
process's summary lines ("epoch k/n ... test ... acc X") are its progress; when it is gone the
run on the tracking server says how it ended, and a run it left RUNNING (killed hard) is ended
FAILED (tracking.sweeps). The same `launch` runs in a local thread or inside a Ray Tune trial.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from queue import Queue
from typing import Protocol

from ..core.errors import UserError
from ..tracking.sweeps import settle_child

EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)\s.*\stest loss \S+ acc ([0-9.]+)")
ERROR_LINE = re.compile(r"^error: (.+)")
OUTPUT_LINES_KEPT = 200  # of a failed process, logged to its run (tracking.sweeps)
RAY_CONNECT_SECONDS = 5.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class Launch:
    """One configuration's training process; plain data, so a Ray worker can start it too."""

    index: int
    name: str
    run_id: str
    args: tuple[str, ...]  # `cifar-mlflow train` options
    env: Mapping[str, str]  # tracking URI, experiment, MLFLOW_RUN_ID
    cwd: str  # relative --data-dir and sqlite paths mean what they meant to the sweep


@dataclass(frozen=True)
class Outcome:
    status: str  # FINISHED, FAILED or KILLED, as the run ended on the tracking server
    run_id: str = ""
    reason: str = ""
    best_test_acc: float | None = None
    seconds: float = 0.0


class Observer(Protocol):
    """What the progress board hears; called from worker threads (local) or Ray's driver loop."""

    def started(self, index: int) -> None: ...
    def epoch(self, index: int, epoch: int, epochs: int, test_acc: float) -> None: ...
    def finished(self, index: int, outcome: Outcome) -> None: ...


def launch(
    spec: Launch,
    on_epoch: Callable[[int, int, float], None],
    gpu: str | None = None,
    on_process: Callable[[subprocess.Popen | None], None] = lambda p: None,
) -> Outcome:
    """Train one configuration in a child process and report how its run ended."""
    start = time.monotonic()
    env = {**os.environ, **spec.env}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    process = subprocess.Popen(
        [sys.executable, "-m", "cifar_mlflow", "train", *spec.args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        cwd=spec.cwd if os.path.isdir(spec.cwd) else None, preexec_fn=_stop_with_parent(),
    )  # fmt: skip
    on_process(process)
    output: deque[str] = deque(maxlen=OUTPUT_LINES_KEPT)
    try:
        for line in process.stdout:
            output.append(line.rstrip("\n"))
            if match := EPOCH_LINE.match(line):
                on_epoch(int(match[1]), int(match[2]), float(match[3]))
    finally:
        code = process.wait()
        on_process(None)
    return settle(spec, code, list(output), time.monotonic() - start)


def _stop_with_parent() -> Callable[[], None] | None:
    """On Linux, the child gets SIGTERM (and ends its run KILLED) when the thread that started it
    dies: a sweep killed hard, or a Ray trial whose actor Ray kills, leaves no orphan training.
    libc is looked up here, before the fork, so the child only makes one system call."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def settle(spec: Launch, code: int | None, output: list[str], seconds: float) -> Outcome:
    """How the run ended, as the tracking server has it; a run the process could not end is
    ended FAILED there, with the reason read from the process's output (tracking.sweeps)."""
    end = settle_child(spec.env["MLFLOW_TRACKING_URI"], spec.run_id,
                       failure_from_output(code, output), output)  # fmt: skip
    return Outcome(end.status, spec.run_id, end.reason, end.best_test_acc, seconds)


def failure_from_output(code: int | None, output: Sequence[str]) -> str:
    errors = [m[1] for line in output if (m := ERROR_LINE.match(line))]
    if errors:
        return errors[-1]
    if code is not None and code < 0:
        how = f"killed by {signal.Signals(-code).name}"
    else:
        how = f"exited with code {code}" if code is not None else "its trial failed"
    last = next((line for line in reversed(output) if line.strip()), "")
    return f"{how}: {last}"[:500] if last else how


def visible_gpus() -> list[str]:
    """The GPUs this process may use, by the ids CUDA_VISIBLE_DEVICES would give them."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def run_local(
    launches: Sequence[Launch], observer: Observer, parallel: int, gpus: Sequence[str]
) -> dict[int, Outcome]:
    """`parallel` processes at a time, each slot pinned to one GPU (round robin) where GPUs are
    used. Ctrl-C stops the running processes (their runs end KILLED) and starts no more."""
    slots: Queue[str | None] = Queue()
    for i in range(parallel):
        slots.put(gpus[i % len(gpus)] if gpus else None)
    live: dict[int, subprocess.Popen] = {}
    stopping = threading.Event()

    def one(spec: Launch) -> Outcome | None:
        gpu = slots.get()
        try:
            if stopping.is_set():
                return None
            observer.started(spec.index)

            def track(process: subprocess.Popen | None) -> None:
                if process is None:
                    live.pop(spec.index, None)
                else:
                    live[spec.index] = process

            outcome = launch(
                spec, lambda e, n, acc: observer.epoch(spec.index, e, n, acc), gpu, track
            )
            observer.finished(spec.index, outcome)
            return outcome
        finally:
            slots.put(gpu)

    pool = ThreadPoolExecutor(parallel, thread_name_prefix="sweep")
    futures = {spec.index: pool.submit(one, spec) for spec in launches}
    try:
        outcomes = {i: f.result() for i, f in futures.items()}
    except KeyboardInterrupt:
        stopping.set()
        for process in list(live.values()):
            process.send_signal(signal.SIGINT)  # train ends its run KILLED after the current step
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return {i: o for i, o in outcomes.items() if o is not None}


def run_ray(
    launches: Sequence[Launch], observer: Observer, cpus: float, gpus: float,
    parallel: int | None, name: str,
) -> dict[int, Outcome]:  # fmt: skip
    """Each configuration a trial of Ray Tune's grid search with its own resources, in the Ray
    session `ray_session` opened. A failed trial is one FAILED run; the others go on."""
    _, tune = import_ray()
    by_index = {spec.index: spec for spec in launches}
    progress = _ray_progress(tune, observer)
    # Tune's own progress tables would interleave with the board: its older output engine, unlike
    # the newer one, prints nothing at verbose=0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune's own records of the trials are not kept: MLflow holds everything about them.
    with tempfile.TemporaryDirectory(prefix="cifar-mlflow-ray-") as storage:
        tuner = tune.Tuner(
            tune.with_resources(
                tune.with_parameters(_trial, launches=by_index), {"cpu": cpus, "gpu": gpus}
            ),
            param_space={"index": tune.grid_search(list(by_index))},
            tune_config=tune.TuneConfig(max_concurrent_trials=parallel or 0),
            run_config=tune.RunConfig(
                name=name, storage_path=storage, verbose=0, callbacks=[progress]
            ),
        )  # fmt: skip
        tuner.fit()
    outcomes = dict(progress.outcomes)
    for index in set(by_index) - set(outcomes):  # the trial itself died: settle its run here
        outcomes[index] = settle(by_index[index], None, progress.errors.get(index, []), 0.0)
        observer.finished(index, outcomes[index])
    return outcomes


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
    """Join the cluster at `address`, or start a local Ray instance for the sweep."""
    ray, _ = import_ray()
    check_ray_address(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)  # fmt: skip
    except ConnectionError as e:
        raise UserError(f"cannot join Ray at {address}: {str(e).splitlines()[0]}") from None
    try:
        yield
    finally:
        ray.shutdown()


def trial_gpus(requested: float | None, devices: set[str]) -> float:
    """GPUs per trial: as requested, else one where the cluster has GPUs and the device may be
    one. Checked before anything starts: a trial asking for GPUs the cluster lacks waits forever."""
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
    return 1.0 if cluster_gpus and devices - {"cpu"} else 0.0


def _trial(config: dict, launches: Mapping[int, Launch]) -> None:
    """A Ray Tune trial: train one configuration, reporting each epoch and then the outcome (as
    results, not an exception, so a failed configuration is one line, not a traceback)."""
    from ray import tune

    spec = launches[config["index"]]
    outcome = launch(
        spec, lambda e, n, acc: tune.report({"epoch": e, "epochs": n, "test_acc": acc})
    )
    tune.report({f"outcome_{k}": v for k, v in asdict(outcome).items()})


def _ray_progress(tune, observer: Observer):
    """A Tune callback (its class is made once Ray is imported) that feeds the trials' results to
    the observer and keeps the outcomes."""

    class Progress(tune.Callback):
        def __init__(self, observer: Observer):
            self.observer = observer
            self.outcomes: dict[int, Outcome] = {}
            self.errors: dict[int, list[str]] = {}

        def __getstate__(self):
            # Tune pickles its run config to save the experiment (a sweep never restores one);
            # the observer (a lock, a terminal) stays with this live callback.
            return {"observer": None, "outcomes": {}, "errors": {}}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.observer.started(trial.config["index"])

        def on_trial_result(self, iteration, trials, trial, result, **info):
            index = trial.config["index"]
            if "outcome_status" in result:
                outcome = Outcome(**{f.name: result[f"outcome_{f.name}"] for f in fields(Outcome)})
                self.outcomes[index] = outcome
                self.observer.finished(index, outcome)
            elif "epoch" in result:
                self.observer.epoch(index, result["epoch"], result["epochs"], result["test_acc"])

        def on_trial_error(self, iteration, trials, trial, **info):
            self.errors[trial.config["index"]] = [
                f"Ray trial {trial.trial_id} failed: see {trial.error_file}"
            ]

    return Progress(observer)
