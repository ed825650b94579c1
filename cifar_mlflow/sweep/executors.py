"""How a sweep's configurations train: one `cifar-mlflow train` process each, on this machine
(`run_local`) or inside a Ray Tune trial (ray_executor.py runs the same `launch` there).

Every configuration is a child process logging into a run the sweep created for it
(MLFLOW_RUN_ID), so a crash, an out-of-memory kill or a bad config ends that run only. Its
progress comes as structured events on a pipe (train/events.py); when it is gone the run on the
tracking server says how it ended, and a run it left unfinished (killed hard) is ended there
(tracking.sweeps). Each child runs in a session of its own, so a terminal's Ctrl-C reaches the
sweep alone, which forwards exactly one signal to each child's process group (`Children`). What a
child starts (compile workers, data workers) is in its group, and the group is killed once the
child is gone, so nothing it started outlives it or holds its pipes open.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from queue import Queue
from typing import Protocol

from ..tracking.runs import FAILED, KILLED
from ..tracking.sweeps import settle_child
from ..train.events import EVENTS_FD, RUNS_PER_DEVICE, Event, read_events

ERROR_LINE = re.compile(r"^error: (.+)")
OUTPUT_LINES_KEPT = 200  # of a failed process, logged to its run (tracking.sweeps)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# After the forwarded signal, how long a child has to end its run KILLED before it is killed:
# train stops after the step in progress, then ends its run (measured on a loaded 2-core
# machine: 14-19 s, tests/test_signals.py), and the sweep must be gone within 30 s.
STOP_GRACE_SECONDS = 20.0
# Once a child is gone and its group killed, its pipes close within moments: how long the
# threads that read them are waited for.
JOIN_SECONDS = 10.0


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
    sweep then `stop`s them: one signal to each group (train ends its run KILLED after its
    current step), SIGKILL to every group once its child is gone or the grace period is over, and
    none started after that."""

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
            signal_group(process, signum)  # once: a second would mean "stop at once" to train
        deadline = time.monotonic() + grace
        try:
            for process in running:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(max(0.0, deadline - time.monotonic()))
        finally:  # past the grace period, or a second signal: stop at once, as train does
            for process in running:
                signal_group(process, signal.SIGKILL)  # its run is ended KILLED by `settle`


def signal_group(process: subprocess.Popen, signum: int) -> None:
    """`signum` to every process of `process`'s group (it leads one: start_new_session), the
    processes it started too, even once it is gone itself; nothing, where none is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def _end_group_when_gone(process: subprocess.Popen) -> None:
    """Once the child has exited, kill what it left behind in its group: an orphaned worker
    would hold the child's pipes open (the readers would never see EOF) and its device."""
    process.wait()
    signal_group(process, signal.SIGKILL)


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
    reaper = threading.Thread(target=_end_group_when_gone, args=(process,), daemon=True)
    reaper.start()
    try:
        for event in read_events(events):
            on_event(event)
    finally:
        events.close()  # should on_event fail, the child's writes fail too rather than block
        code = process.wait()
        children.done(spec.index)
        reaper.join(JOIN_SECONDS)
        collector.join(JOIN_SECONDS)
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


def sharing_device(spec: Launch, runs: int) -> Launch:
    """`spec` told that `runs` trainings share its device (RUNS_PER_DEVICE: logged by the run)."""
    return dataclasses.replace(spec, env={**spec.env, RUNS_PER_DEVICE: str(max(1, runs))})


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
    # The slots on one device (every slot, without GPUs), as many as there are runs to fill them.
    sharing = {slot: min(len(launches), slots.count(slot)) for slot in slots}

    def one(spec: Launch) -> Outcome:
        gpu = free.get()
        try:
            if children.stopped_by is None:
                observer.started(spec.index)
            outcome = launch(sharing_device(spec, sharing[gpu]),
                             lambda event: observer.progress(spec.index, event), gpu,
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
