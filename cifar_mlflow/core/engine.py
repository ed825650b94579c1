"""The training engine: pure PyTorch, no MLflow, no printing.

A `Trainer` owns the model, optimizer, schedule and the device-resident batches, and reports each
finished epoch through a callback. The hot loop never synchronises with the host: loss and correct
counts are summed on the device and read once per epoch.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import random
import subprocess
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .batches import DeviceBatches
from .config import TrainConfig
from .data import Cifar10
from .errors import UserError
from .models import build_model, count_parameters

EVAL_BATCH_SIZE = 1024
# Reading the summed loss syncs host and device (on a GPU it drains the queue), so the training
# loop looks for a NaN or an infinity only every this many steps and at the end of the epoch
# (measured on the CPU: checking every step costs nothing measurable there).
DIVERGENCE_CHECK_STEPS = 20


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float  # fraction in [0, 1]
    test_loss: float
    test_acc: float
    lr: float  # the learning rate used during this epoch
    epoch_seconds: float  # wall time of the epoch: training and evaluation
    images_per_second: float  # training images / training time
    val_loss: float | None = None
    val_acc: float | None = None

    def as_metrics(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k != "epoch" and v is not None}


class Diverged(UserError):
    """Training diverged: the model is lost, so the run ends FAILED and no model is logged."""


class LossDiverged(Diverged):
    """The training loss became NaN or infinite: the weights are lost, so the run stops."""

    def __init__(self, loss: float, images_seen: int, epoch: int | None = None):
        self.loss, self.images_seen, self.epoch = loss, images_seen, epoch
        super().__init__(
            f"training diverged: the loss became {loss} in epoch {epoch} (within its first "
            f"{images_seen} images); lower --lr, or try another --optimizer or --activation"
        )


class ModelDiverged(Diverged):
    """The weights, or what the model outputs, are no longer finite after an epoch whose loss
    looked finite (each step's loss is taken before the step that may break the weights): the
    model is lost, so the run stops and no model is logged."""

    def __init__(self, what: str, epoch: int):
        self.epoch = epoch
        super().__init__(
            f"training diverged: {what} after epoch {epoch}; lower --lr, or try another "
            "--optimizer or --activation"
        )


class StopTraining(Exception):
    """Raised by an epoch callback to end training on purpose before the last epoch (a tuner
    pruning a trial): the epochs done so far stand, and the run ends as finished."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class TrainResult:
    model: nn.Module
    history: list[EpochMetrics]
    stopped_early: str | None = None  # StopTraining's reason, when a callback ended it


EpochCallback = Callable[[EpochMetrics], None]
# Wraps an epoch's batches, e.g. in a progress bar: (batches, epoch) -> iterable of the same.
BatchWrapper = Callable[[DeviceBatches, int], Iterable]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """The precision a run trains in: `auto` is bf16 autocast on a GPU that has bf16 (Ampere and
    later), fp16 autocast with a gradient scaler on one that has not, fp32 on a CPU. bf16 asked
    for where the GPU lacks it is a UserError."""
    bf16 = device.type != "cuda" or torch.cuda.is_bf16_supported(including_emulation=False)
    if name == "auto":
        return "fp32" if device.type != "cuda" else "bf16" if bf16 else "fp16"
    if name == "bf16" and not bf16:
        raise UserError(
            f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16: use --precision "
            "fp16 (autocast with a gradient scaler), fp32 or auto"
        )
    return name


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


OptimizerFactory = Callable[[TrainConfig, Iterable[nn.Parameter]], torch.optim.Optimizer]
# Keyed by core.config.OPTIMIZERS' names (tests/test_engine.py checks): a new optimizer is an
# entry here, its name there, and its learning-rate range in tune/ranges.py.
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": lambda c, params: torch.optim.SGD(params, lr=c.lr, weight_decay=c.weight_decay),
    "momentum": lambda c, params: torch.optim.SGD(
        params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay
    ),
    # Adam's weight decay is L2 added to the gradient; AdamW's is decoupled (Loshchilov & Hutter).
    "adam": lambda c, params: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda c, params: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
}


def build_optimizer(config: TrainConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r}: one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[config.optimizer](config, params)


def build_schedule(config: TrainConfig, optimizer: torch.optim.Optimizer):
    """Stepped once per epoch, so the `lr` logged at an epoch is the one used throughout it. The
    constant schedule is a scheduler too (factor 1), so both kinds checkpoint the same way."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def forward_flops(model: nn.Module, device: torch.device) -> int:
    """Forward FLOPs for one 32x32 image, counted by torch's FlopCounterMode (a multiply-add
    counts as two)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32, device=device))
    model.train(was_training)
    return counter.get_total_flops()


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot work on `device` here, or None. Checked up front because
    torch.compile fails only at the first step, after tracing the model (measured: 55 s on 2 CPU
    cores for ResNet-18 with no C++ compiler). Inductor needs Triton on CUDA and, on a CPU, the
    C++ compiler it would call: $CXX, else g++ (what torch's cpp_builder picks on Linux)."""
    if device.type == "cuda":
        return None if importlib.util.find_spec("triton") else "Triton is not installed"
    compiler = os.environ.get("CXX") or "g++"
    try:
        subprocess.run([compiler, "--version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"no working C++ compiler ({compiler}: {type(e).__name__})"
    return None


def check_finite(loss_sum: torch.Tensor, seen: int) -> None:
    loss = loss_sum.item() / seen
    if not math.isfinite(loss):
        raise LossDiverged(loss, seen)


def check_finite_weights(model: nn.Module, epoch: int) -> None:
    """Every floating-point parameter and buffer (batch-norm statistics too) is finite, read in
    one sync with the device once per epoch (measured: 0.14-0.34 s for ResNet-18 on 2 CPU cores,
    against minutes per CIFAR-10 epoch). Exact: a sum per tensor would be cheaper but calls huge
    finite weights infinite."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if not torch.stack([t.isfinite().all() for t in tensors]).all():
        raise ModelDiverged("the weights became NaN or infinite", epoch)


def check_finite_outputs(epoch: int, test_loss: float, val_loss: float | None) -> None:
    """Finite weights can still be so large that the model outputs NaN or infinity: then its
    evaluation loss is not finite (cross-entropy of finite logits always is). This judges the
    model, not a choice between models, so the test split may tell it."""
    for split, loss in (("test", test_loss), ("validation", val_loss)):
        if loss is not None and not math.isfinite(loss):
            raise ModelDiverged(
                f"the model's outputs became {loss} on the {split} images", epoch
            )


class Trainer:
    """Trains `model` (by default the network `config` names, built after seeding) on `data`."""

    def __init__(self, config: TrainConfig, data: Cifar10, device: torch.device,
                 model: nn.Module | None = None):  # fmt: skip
        self.config = config
        self.device = device
        self.precision = resolve_precision(config.precision, device)
        seed_everything(config.seed)
        self.model = model or build_model(
            config.model, config.activation, len(data.classes), config.init
        )
        # channels_last suits cuDNN's bf16 kernels, and oneDNN's on a CPU too (measured: 1 thread,
        # batch 32, CPU seconds per step against the default format: ResNet-18 2.43 vs 2.54,
        # Ghost-ResNet-18 1.27 vs 1.66).
        self.model.to(device, memory_format=torch.channels_last)
        self.num_parameters = count_parameters(self.model)
        self.optimizer = build_optimizer(config, self.model.parameters())
        self.schedule = build_schedule(config, self.optimizer)
        self.loss_fn = nn.CrossEntropyLoss()
        generator = torch.Generator(device=device)
        generator.manual_seed(config.seed)
        # Every training batch has one shape (the last partial one is dropped, as airbench does):
        # a compiled step compiles once and cuDNN autotunes once. Evaluation sees every image.
        self.train_batches = DeviceBatches(
            data.train, config.batch_size, device, augment=True, generator=generator,
            drop_last=True,
        )  # fmt: skip
        self.test_batches = DeviceBatches(data.test, EVAL_BATCH_SIZE, device)
        self.val_batches = data.val and DeviceBatches(data.val, EVAL_BATCH_SIZE, device)
        # fp16's narrow range underflows small gradients: the scaler scales the loss up and skips
        # a step whose gradients overflowed. Disabled, it passes everything through.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.compile_fallback: str | None = None  # why --compile trains uncompiled
        self.step_model = self._compiled() if config.compile else self.model
        # The predicted class of each test and validation image ("test", "val") at the latest
        # evaluation, in the split's order, on the device: what that epoch's accuracy counted.
        self.predicted: dict[str, torch.Tensor] = {}
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    @property
    def compile_used(self) -> bool:
        return self.step_model is not self.model

    def _compiled(self) -> nn.Module:
        reason = compile_unavailable(self.device)
        if reason is None:
            try:
                return torch.compile(self.model)
            except Exception as e:  # e.g. a Python version TorchDynamo does not support yet
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        self.compile_fallback = f"torch.compile unavailable ({reason})"
        warnings.warn(f"--compile: {self.compile_fallback}; training uncompiled")
        return self.model

    def autocast(self):
        """The precision context of a forward pass (bf16 or fp16 autocast, a no-op for fp32)."""
        return torch.autocast(
            self.device.type,
            dtype=AUTOCAST_DTYPES.get(self.precision, torch.float32),
            enabled=self.precision in AUTOCAST_DTYPES,
        )

    def fit(
        self,
        on_epoch: EpochCallback,
        wrap: BatchWrapper | None = None,
        done: Iterable[EpochMetrics] = (),
    ) -> TrainResult:
        """Train the epochs after those in `done` (a resumed run's history), until the last or
        until `on_epoch` raises StopTraining."""
        history = list(done)
        for epoch in range(len(history) + 1, self.config.epochs + 1):
            metrics = self.run_epoch(epoch, wrap)
            history.append(metrics)
            try:
                on_epoch(metrics)
            except StopTraining as stop:
                return TrainResult(self.model, history, stopped_early=stop.reason)
        return TrainResult(self.model, history)

    def run_epoch(self, epoch: int, wrap: BatchWrapper | None = None) -> EpochMetrics:
        started = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        try:
            train_loss, train_acc = self.train_one_epoch(
                wrap(self.train_batches, epoch) if wrap else self.train_batches
            )
        except LossDiverged as e:
            raise LossDiverged(e.loss, e.images_seen, epoch) from None
        check_finite_weights(self.model, epoch)
        train_seconds = time.perf_counter() - started
        self.schedule.step()
        self.predicted = {}
        test_loss, test_acc = self.evaluate(self.test_batches, "test")
        val_loss, val_acc = (
            self.evaluate(self.val_batches, "val") if self.val_batches else (None, None)
        )
        check_finite_outputs(epoch, test_loss, val_loss)
        return EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=train_acc,
            test_loss=test_loss,
            test_acc=test_acc,
            lr=lr,
            epoch_seconds=time.perf_counter() - started,
            images_per_second=self.train_batches.num_images / train_seconds,
            val_loss=val_loss,
            val_acc=val_acc,
        )

    def train_one_epoch(self, batches: Iterable) -> tuple[float, float]:
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for step, (images, labels) in enumerate(batches, 1):
            with self.autocast():
                logits = self.step_model(images)
                loss = self.loss_fn(logits, labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
            if step % DIVERGENCE_CHECK_STEPS == 0:
                check_finite(loss_sum, seen)
        check_finite(loss_sum, seen)
        return loss_sum.item() / seen, correct.item() / seen

    @torch.inference_mode()
    def evaluate(self, batches: DeviceBatches, split: str | None = None,
                 model: nn.Module | None = None) -> tuple[float, float]:  # fmt: skip
        """Loss and accuracy of `model` (default: the one training) on `batches`; the predicted
        class of each image is kept in `predicted[split]` (uint8: CIFAR-10 has 10 classes)."""
        model = (self.model if model is None else model).eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        predicted = torch.empty(batches.num_images, dtype=torch.uint8, device=self.device)
        done = 0
        for images, labels in batches:
            with self.autocast():
                logits = model(images)
            loss_sum += nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
            classes = logits.argmax(1)
            correct += (classes == labels).sum()
            predicted[done : done + len(labels)] = classes
            done += len(labels)
        if split is not None:
            self.predicted[split] = predicted
        return loss_sum.item() / batches.num_images, correct.item() / batches.num_images

    def predictions_of(
        self, weights: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """The predicted classes of the test and validation images (as `predicted`) by the model
        as it is, or with `weights` (a state dict) in a copy of it: for an epoch whose own
        evaluation is not at hand (one trained before a resume)."""
        model = self.model
        if weights is not None:
            model = copy.deepcopy(self.model)
            model.load_state_dict(weights)
        self.predicted = {}
        self.evaluate(self.test_batches, "test", model)
        if self.val_batches:
            self.evaluate(self.val_batches, "val", model)
        return self.predicted
