"""Where a sweep's configurations train: one `cifar-mlflow train` process each, here or on Ray.

Every configuration is a child process logging into a run the sweep created for it
(MLFLOW_RUN_ID), so a crash, an out-of-memory kill or a bad config ends that run only. Its
progress comes as structured events on a pipe (train/events.py); when it is gone the run on the
tracking server says how it ended, and a run it left unfinished (killed hard) is ended there
(tracking.sweeps). Each child runs in a session of its own, so a terminal's Ctrl-C reaches the
sweep alone, which forwards exactly one signal to each child (`Children`). The same `launch` runs
in a local thread or inside a Ray Tune trial.
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from queue import Queue
from typing import Protocol

from ..core.errors import UserError
from ..tracking.runs import FAILED, KILLED
from ..tracking.sweeps import settle_child
from ..train.events import EVENTS_FD, Event, as_dict, from_dict, read_events
from .cluster import record_node, runtime_env

ERROR_LINE = re.compile(r"^error: (.+)")
OUTPUT_LINES_KEPT = 200  # of a failed process, logged to its run (tracking.sweeps)
RAY_CONNECT_SECONDS = 5.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# After the forwarded signal, how long a child has to end its run KILLED before it is killed:
# train stops after the step in progress, then ends its run (measured on a loaded 2-core
# machine: 14-19 s, tests/test_signals.py), and the sweep must be gone within 30 s.
STOP_GRACE_SECONDS = 20.0


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
    test_acc: float | None = None
    seconds: float = 0.0


class Observer(Protocol):
    """What the progress board hears; called from worker threads (local) or Ray's driver loop."""

    def started(self, index: int) -> None: ...
    def progress(self, index: int, event: Event) -> None: ...
    def finished(self, index: int, outcome: Outcome) -> None: ...


class Children:
    """A sweep's running training processes. Each starts in a session (process group) of its
    own, so a terminal's Ctrl-C, which goes to the foreground group, reaches only the sweep; the
    sweep then `stop`s them: one signal each (train ends its run KILLED after its current step),
    SIGKILL for any still alive after the grace period, and none started after that."""

    def __init__(self):
        self.lock = threading.Lock()
        self.live: dict[int, subprocess.Popen] = {}
        self.stopped_by: int | None = None  # the signal that stopped the sweep

    def start(self, index: int, command: Sequence[str], **popen) -> subprocess.Popen | None:
        """Start `command`, unless the sweep is stopping (then None). Under the lock, so a
        process is either signalled by `stop` or never started."""
        with self.lock:
            if self.stopped_by is not None:
                return None
            # preexec_fn is safe with threads about here: one async-signal-safe call (prctl).
            process = subprocess.Popen(
                command,
                start_new_session=True,
                preexec_fn=_stop_with_parent(),  # noqa: PLW1509
                **popen,
            )
            self.live[index] = process
            return process

    def done(self, index: int) -> None:
        with self.lock:
            self.live.pop(index, None)

    def stop(self, signum: int, grace: float = STOP_GRACE_SECONDS) -> None:
        with self.lock:
            self.stopped_by = signum
            running = list(self.live.values())
        for process in running:
            process.send_signal(signum)  # once: a second one would mean "stop at once" to train
        deadline = time.monotonic() + grace
        try:
            for process in running:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(max(0.0, deadline - time.monotonic()))
        finally:  # past the grace period, or a second signal: stop at once, as train does
            for process in running:
                if process.poll() is None:
                    process.kill()  # its run is ended KILLED by `settle`


def launch(
    spec: Launch,
    on_event: Callable[[Event], None],
    gpu: str | None = None,
    children: Children | None = None,
) -> Outcome:
    """Train one configuration in a child process and report how its run ended."""
    children = children or Children()
    start = time.monotonic()
    env = {**os.environ, **spec.env}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    read_end, write_end = os.pipe()
    env[EVENTS_FD] = str(write_end)
    try:
        process = children.start(
            spec.index, [sys.executable, "-m", "cifar_mlflow", "train", *spec.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            cwd=spec.cwd if os.path.isdir(spec.cwd) else None, pass_fds=(write_end,),
        )  # fmt: skip
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)  # the child holds the only write end: EOF when it is gone
    events = open(read_end)  # noqa: SIM115 (closed before the wait below, not at a block's end)
    if process is None:
        events.close()
        return settle(spec, None, [], 0.0, children.stopped_by)
    output: deque[str] = deque(maxlen=OUTPUT_LINES_KEPT)
    collector = threading.Thread(target=_collect, args=(process.stdout, output), daemon=True)
    collector.start()
    try:
        for event in read_events(events):
            on_event(event)
    finally:
        events.close()  # should on_event fail, the child's writes fail too rather than block
        code = process.wait()
        children.done(spec.index)
        collector.join()
    return settle(spec, code, list(output), time.monotonic() - start, children.stopped_by)


def _collect(lines: Iterable[str], output: deque[str]) -> None:
    for line in lines:
        output.append(line.rstrip("\n"))


def _stop_with_parent() -> Callable[[], None] | None:
    """On Linux, the child gets SIGTERM (and ends its run KILLED) when the thread that started it
    dies: a sweep killed hard, or a Ray trial whose actor Ray kills, leaves no orphan training.
    libc is looked up here, before the fork, so the child only makes one system call."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def settle(spec: Launch, code: int | None, output: list[str], seconds: float,
           stopped_by: int | None = None) -> Outcome:  # fmt: skip
    """How the run ended, as the tracking server has it. A run the process could not end is
    ended there (tracking.sweeps): KILLED if the sweep was stopped (`stopped_by`, a signal),
    else FAILED with the reason read from the process's output."""
    if stopped_by is None:
        status, reason = FAILED, failure_from_output(code, output)
    else:
        how = f"({failure_from_output(code, output)})" if code is not None else "before it started"
        status, reason = KILLED, f"stopped by {signal.Signals(stopped_by).name} {how}"
    end = settle_child(spec.env["MLFLOW_TRACKING_URI"], spec.run_id, reason, output, status)
    return Outcome(end.status, spec.run_id, end.reason, end.test_acc, seconds)


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


def local_slots(parallel: int | None, runs_per_gpu: int, gpus: Sequence[str]) -> list[str | None]:
    """Where each process of the local executor trains at a time: a GPU id (its
    CUDA_VISIBLE_DEVICES) per slot, or None without GPUs. `runs_per_gpu` K: K slots on each GPU,
    and on a machine without GPUs K at once on the CPU; `parallel` N instead: N slots, round robin
    over the GPUs."""
    count = parallel or runs_per_gpu * max(1, len(gpus))
    return [gpus[i % len(gpus)] if gpus else None for i in range(count)]


def run_local(
    launches: Sequence[Launch], observer: Observer, slots: Sequence[str | None]
) -> dict[int, Outcome]:
    """A process per slot at a time (`local_slots`). SIGINT or SIGTERM stops the running
    processes (`Children.stop`: their runs end KILLED), ends the rest KILLED unstarted, and is
    raised again once every run is settled."""
    free: Queue[str | None] = Queue()
    for slot in slots:
        free.put(slot)
    children = Children()

    def one(spec: Launch) -> Outcome:
        gpu = free.get()
        try:
            if children.stopped_by is None:
                observer.started(spec.index)
            outcome = launch(spec, lambda event: observer.progress(spec.index, event), gpu,
                             children)  # fmt: skip
            observer.finished(spec.index, outcome)
            return outcome
        finally:
            free.put(gpu)

    pool = ThreadPoolExecutor(len(slots), thread_name_prefix="sweep")
    futures = {spec.index: pool.submit(one, spec) for spec in launches}
    try:
        outcomes = {i: f.result() for i, f in futures.items()}
    except KeyboardInterrupt as e:
        children.stop(getattr(e, "signum", signal.SIGINT))
        pool.shutdown(wait=True)  # every run settled: the unstarted ones too
        raise
    pool.shutdown()
    return outcomes


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
            elif (event := from_dict(result)) is not None:
                self.observer.progress(index, event)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.errors[trial.config["index"]] = [
                f"Ray trial {trial.trial_id} failed: see {trial.error_file}"
            ]

    return Progress(observer)
