"""The fast path's correctness: device batches against torchvision, precision and compile options,
FLOPs, system metrics in a run, and the training benchmark that runs without MLflow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from click.testing import CliRunner
from PIL import Image
from torch import nn

from cifar_mlflow.cli import cli
from cifar_mlflow.core import config as cfg
from cifar_mlflow.core.batches import PAD, DeviceBatches, crop_and_flip
from cifar_mlflow.core.config import TrainConfig
from cifar_mlflow.core.data import MEAN, STD, Cifar10, Split, load_cifar10
from cifar_mlflow.core.engine import (
    OPTIMIZERS,
    Trainer,
    build_optimizer,
    compile_unavailable,
    forward_flops,
    resolve_precision,
)
from cifar_mlflow.core.errors import UserError
from cifar_mlflow.core.models import build_model
from cifar_mlflow.tune.ranges import DEFAULT_LR_RANGES

from .conftest import PROJECT_ROOT, tiny_images, tiny_train_args

CPU = torch.device("cpu")
SIZE = 32
OFFSETS = 2 * PAD + 1  # a crop starts at 0..8 in each direction


def random_split(n: int, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, SIZE, SIZE), dtype=np.uint8)
    return Split(images, np.arange(n, dtype=np.int64))  # label i marks image i


def reference(image: np.ndarray, top: int, left: int, flip: bool) -> np.ndarray:
    """torchvision's RandomCrop(32, padding=4) then RandomHorizontalFlip on a PIL image, with
    the random draws fixed: the same pad, crop and hflip calls those transforms make."""
    pil = Image.fromarray(image.transpose(1, 2, 0))
    pil = TF.crop(TF.pad(pil, PAD), top, left, SIZE, SIZE)
    if flip:
        pil = TF.hflip(pil)
    return np.asarray(pil).transpose(2, 0, 1)


def normalise(images: np.ndarray) -> torch.Tensor:
    """What ToTensor then Normalize(MEAN, STD) make of uint8 images."""
    return TF.normalize(torch.from_numpy(images).float() / 255, MEAN, STD)


def unnormalise(images: torch.Tensor) -> np.ndarray:
    std, mean = torch.tensor(STD).view(1, 3, 1, 1), torch.tensor(MEAN).view(1, 3, 1, 1)
    return (images * std + mean).mul(255).round().to(torch.uint8).numpy()


# --- device batches ---------------------------------------------------------------------------


def test_crop_and_flip_equals_torchvision_for_every_offset_and_flip():
    cases = [(t, l, f) for t in range(OFFSETS) for l in range(OFFSETS) for f in (False, True)]
    split = random_split(len(cases))
    top, left, flip = (torch.tensor(column) for column in zip(*cases))
    padded = nn.functional.pad(torch.from_numpy(split.images), (PAD,) * 4)

    out = crop_and_flip(padded, top, left, flip).numpy()

    expected = np.stack([reference(split.images[i], *case) for i, case in enumerate(cases)])
    np.testing.assert_array_equal(out, expected)


def test_augmented_batches_are_normalised_torchvision_crops_of_their_source():
    split = random_split(40)
    batches = DeviceBatches(
        split, 16, CPU, augment=True, generator=torch.Generator().manual_seed(0)
    )
    seen_offsets, seen_flips, labels = set(), set(), []
    for images, batch_labels in batches:
        assert images.dtype == torch.float32
        assert images.is_contiguous(memory_format=torch.channels_last)
        for image, label in zip(unnormalise(images), batch_labels.tolist()):
            matches = [
                (t, l, f)
                for t in range(OFFSETS)
                for l in range(OFFSETS)
                for f in (False, True)
                if np.array_equal(image, reference(split.images[label], t, l, f))
            ]
            assert matches, f"image {label} is no crop of its source"
            seen_offsets.add(matches[0][:2])
            seen_flips.add(matches[0][2])
        labels += batch_labels.tolist()
    assert sorted(labels) == list(range(40))  # every image once per pass
    assert len(seen_offsets) > 10 and seen_flips == {False, True}  # random, not one fixed crop


def test_plain_batches_are_torchvision_normalised_in_stored_order():
    split = random_split(10)
    images, labels = zip(*DeviceBatches(split, 4, CPU))
    images, labels = torch.cat(images), torch.cat(labels)
    torch.testing.assert_close(images, normalise(split.images), rtol=0, atol=1e-5)
    assert labels.tolist() == list(range(10))


def test_seeded_shuffle_is_deterministic_and_reshuffles_each_pass():
    def passes(seed: int, count: int = 2) -> list[list[int]]:
        batches = DeviceBatches(
            random_split(50), 8, CPU, augment=True, generator=torch.Generator().manual_seed(seed)
        )
        return [torch.cat([y for _, y in batches]).tolist() for _ in range(count)]

    first, again, other = passes(1), passes(1), passes(2)
    assert first == again
    assert first[0] != first[1] and sorted(first[0]) == sorted(first[1]) == list(range(50))
    assert first != other


def test_same_seed_gives_identical_augmented_images():
    def first_batch(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return next(iter(DeviceBatches(random_split(20), 20, CPU, True, generator)))[0]

    assert torch.equal(first_batch(3), first_batch(3))
    assert not torch.equal(first_batch(3), first_batch(4))


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize(
    ("n", "batch_size", "sizes"), [(10, 4, [4, 4, 2]), (8, 4, [4, 4]), (3, 8, [3])]
)
def test_batch_counts(n, batch_size, sizes, augment):
    batches = DeviceBatches(
        random_split(n), batch_size, CPU, augment, torch.Generator().manual_seed(0)
    )
    assert len(batches) == len(sizes) and batches.num_images == n
    assert [len(y) for _, y in batches] == sizes


@pytest.mark.parametrize(
    ("n", "batch_size", "sizes"), [(10, 4, [4, 4]), (8, 4, [4, 4]), (3, 8, [3])]
)
def test_training_batches_drop_the_last_partial_one_and_each_pass_leaves_out_others(
    n, batch_size, sizes
):
    batches = DeviceBatches(random_split(n), batch_size, CPU, True,
                            torch.Generator().manual_seed(0), drop_last=True)  # fmt: skip
    assert len(batches) == len(sizes) and batches.num_images == sum(sizes)
    passes = [torch.cat([y for _, y in batches]) for _ in range(20)]
    assert all(sorted(map(len, (y for _, y in batches))) == sizes for _ in range(2))
    assert all(len(set(p.tolist())) == len(p) for p in passes)  # no image twice in a pass
    # The images left out differ from pass to pass: over 20 passes every image was trained on.
    assert set(torch.cat(passes).tolist()) == set(range(n))


# --- precision and compile --------------------------------------------------------------------


def tiny_data() -> Cifar10:
    train, test = (tiny_images(per_class, seed) for per_class, seed in ((3, 0), (2, 1)))
    def as_split(pair):  # tiny_images makes (N, 32, 32, 3); a Split holds (N, 3, 32, 32)
        return Split(np.ascontiguousarray(pair[0].transpose(0, 3, 1, 2)), pair[1])

    return Cifar10(as_split(train), as_split(test), None, tuple(map(str, range(10))), "tiny")


def tiny_trainer(**changes) -> Trainer:
    """A trainer of a network just big enough to have a convolution, a norm and a classifier:
    these tests check wiring (precision, compile), which a ResNet-18 only makes slow."""
    config = TrainConfig(batch_size=10, epochs=1, device="cpu", **changes)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip
    return Trainer(config, tiny_data(), CPU, model)


def test_precision_auto_is_fp32_on_a_cpu_and_what_the_gpu_has_on_cuda():
    assert resolve_precision("auto", CPU) == "fp32"
    for name in ("bf16", "fp16", "fp32"):
        assert resolve_precision(name, CPU) == name  # the CPU autocasts both half types
    if torch.cuda.is_available():  # bench/gpu.sh runs this on a GPU: bf16 where it has it
        gpu = torch.device("cuda")
        has_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        assert resolve_precision("auto", gpu) == ("bf16" if has_bf16 else "fp16")
        if not has_bf16:
            with pytest.raises(UserError, match="has no bf16: use --precision fp16"):
                resolve_precision("bf16", gpu)


def test_fp16_trains_through_the_gradient_scaler():
    fp32, fp16 = tiny_trainer(precision="fp32"), tiny_trainer(precision="fp16")
    assert not fp32.scaler.is_enabled() and fp16.scaler.is_enabled()
    images, labels = next(iter(fp16.train_batches))
    with torch.no_grad(), fp16.autocast():
        assert fp16.model.eval()(images[:2]).dtype == torch.float16
    before = [p.detach().clone() for p in fp16.model.parameters()]
    scale = fp16.scaler.get_scale()
    (fp32_loss, _), (fp16_loss, _) = (t.train_one_epoch([(images, labels)]) for t in (fp32, fp16))
    assert fp16_loss == pytest.approx(fp32_loss, rel=0.05)
    # The scaler scaled the loss, unscaled the gradients before the step, and the step happened
    # (finite gradients: the scale stands).
    assert fp16.scaler.get_scale() == scale == 2.0**16
    assert any(not torch.equal(a, b) for a, b in zip(before, fp16.model.parameters()))
    # Weights moved as fp32 moved them (same seed, same batch): the gradients were unscaled.
    for a, b in zip(fp32.model.parameters(), fp16.model.parameters()):
        assert torch.allclose(a, b, atol=2e-3)


def test_bf16_on_cpu_autocasts_the_forward_and_still_trains():
    fp32, bf16 = tiny_trainer(precision="fp32"), tiny_trainer(precision="bf16")
    images, labels = next(iter(fp32.train_batches))
    batch = [(images[:2], labels[:2])]
    for trainer, dtype in ((fp32, torch.float32), (bf16, torch.bfloat16)):
        with torch.no_grad(), trainer.autocast():
            assert trainer.model.eval()(images[:2]).dtype == dtype
    (fp32_loss, _), (bf16_loss, _) = fp32.train_one_epoch(batch), bf16.train_one_epoch(batch)
    # Same seed, so the same weights and batch: only the arithmetic differs, and only a little.
    assert bf16_loss != fp32_loss
    assert bf16_loss == pytest.approx(fp32_loss, rel=0.05)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ compiler for inductor")
def test_compile_wraps_the_model_where_a_compiler_is_present():
    assert compile_unavailable(CPU) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer = tiny_trainer(compile=True)
    # Training through it would compile for minutes on 2 cores, so only the wiring is checked:
    # a compiled wrapper that trains the model's own parameters.
    assert trainer.step_model is not trainer.model
    trained, own = list(trainer.step_model.parameters()), list(trainer.model.parameters())
    assert len(trained) == len(own) > 0 and all(a is b for a, b in zip(trained, own))
    plain = tiny_trainer()
    assert plain.step_model is plain.model


def test_compile_falls_back_with_a_warning_where_no_compiler_works(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")  # the compiler inductor would call
    assert "no working C++ compiler" in compile_unavailable(CPU)
    with pytest.warns(UserWarning, match="--compile: torch.compile unavailable"):
        trainer = tiny_trainer(compile=True)
    assert trainer.step_model is trainer.model
    assert not trainer.compile_used and "no working C++ compiler" in trainer.compile_fallback
    assert np.isfinite(trainer.run_epoch(1).train_loss)  # trains uncompiled
    plain = tiny_trainer()
    assert not plain.compile_used and plain.compile_fallback is None  # not asked for


# --- the registries: each entry works, an unknown name is refused -----------------------------


def test_the_optimizer_registry_is_the_cli_choices():
    assert tuple(OPTIMIZERS) == cfg.OPTIMIZERS and set(DEFAULT_LR_RANGES) == set(OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_steps_the_weights(name):
    trainer = tiny_trainer(optimizer=name, lr=0.05, weight_decay=0.1)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    loss, _ = trainer.train_one_epoch(trainer.train_batches)
    assert np.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_adamw_decays_the_weights_apart_from_the_gradient():
    """With zero gradients Adam's L2 decay moves nothing (it goes through the normalised step:
    0/0 guarded by eps stays tiny), AdamW's shrinks each weight by lr * weight_decay."""
    steps = {}
    for name in ("adam", "adamw"):
        weight = nn.Parameter(torch.ones(4))
        optimizer = build_optimizer(TrainConfig(optimizer=name, lr=0.1, weight_decay=0.5), [weight])
        weight.grad = torch.zeros(4)
        optimizer.step()
        steps[name] = 1 - weight.detach()
    assert torch.allclose(steps["adamw"], torch.full((4,), 0.05))
    assert not torch.allclose(steps["adam"], steps["adamw"], atol=1e-3)


@pytest.mark.parametrize("field", sorted(cfg.CHOICES))
def test_a_config_with_an_unknown_choice_is_refused_where_it_is_built(field):
    with pytest.raises(UserError, match=f"unknown {field} 'nonsense': choose one of"):
        TrainConfig(**{field: "nonsense"})


def test_the_registries_refuse_an_unknown_name_given_past_the_config():
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(SimpleNamespace(optimizer="nonsense"), [])
    with pytest.raises(ValueError, match="unknown activation 'nonsense'"):
        build_model("resnet18", "nonsense")


# --- FLOPs ------------------------------------------------------------------------------------


def counted_by_hand(model: nn.Module) -> int:
    """2 x multiply-adds of every conv and linear layer, from the shapes seen in a forward."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = (
                module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            )
            total += 2 * output.numel() * per_output
        else:
            total += 2 * module.in_features * module.out_features * output.shape[0]

    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    return total


@pytest.mark.parametrize(("name", "gflops"), [("resnet18", 1.111), ("ghost_resnet18", 0.568)])
def test_forward_flops_per_image(name, gflops):
    model = build_model(name, "relu").train()
    flops = forward_flops(model, CPU)
    assert model.training  # left as it was
    assert flops == counted_by_hand(build_model(name, "relu"))
    assert flops / 1e9 == pytest.approx(gflops, abs=5e-4)


# --- system metrics ---------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--system-metrics=true", "--no-system-metrics"])
def test_system_metrics_are_logged_unless_turned_off(flag, image_folder, tracking, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # default 10 s
    # The smallest run: Ghost-ResNet-18 (half the weights to export), no validation (one model).
    args = tiny_train_args(image_folder, tracking, "--epochs", "1", "--train-limit", "20",
                           "--test-limit", "10", "--val-size", "0", "--model", "ghost_resnet18")  # fmt: skip
    args.remove("--no-system-metrics")
    result = CliRunner().invoke(cli, [*args, flag], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=[tracking], output_format="list")
    system = {k for k in run.data.metrics if k.startswith("system/")}
    if flag == "--no-system-metrics":
        assert system == set()
    else:
        assert {
            "system/cpu_utilization_percentage",
            "system/system_memory_usage_megabytes",
        } <= system


# --- the training benchmark -------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_bench_orders_put_each_variant_after_every_other_equally_often(n):
    from collections import Counter

    from bench.timing import williams_orders

    orders = williams_orders(n)
    assert all(sorted(order) == list(range(n)) for order in orders)
    follows = Counter((a, b) for order in orders for a, b in zip(order, order[1:]))
    assert len(follows) == n * (n - 1) and len(set(follows.values())) == 1


def run_bench(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """bench/bench_train.py in a fresh interpreter where `import mlflow` fails, as on a GPU
    machine without it."""
    code = (
        "import sys, runpy; sys.modules['mlflow'] = None; "
        f"sys.argv = ['bench_train.py', *{list(args)!r}]; "
        "runpy.run_path('bench/bench_train.py', run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def tiny_bench_args(data_dir, results, doc) -> list[str]:
    """What every throughput/accuracy bench test shares: one small model on tiny data, CPU."""
    return [
        "--device", "cpu", "--data-dir", str(data_dir), "--models", "ghost_resnet18",
        "--workers", "0", "--threads", "1", "--results", str(results), "--doc", str(doc),
    ]  # fmt: skip


def test_bench_runs_without_mlflow_and_writes_its_table(image_folder, tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        "# Kept title\n\n<!-- generated by bench/bench_train.py: begin -->\nstale figures\n"
        "<!-- generated by bench/bench_train.py: end -->\n\nKept notes.\n"
    )
    done = run_bench(
        tmp_path, *tiny_bench_args(image_folder, tmp_path / "results", doc),
        "--batch-size", "4", "--steps", "1", "--rounds", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "results" / "throughput-cpu.json").read_text())
    model = result["models"]["ghost_resnet18"]
    assert set(model["images_per_second"]["wall"]) == {"engine", "pure", "baseline_w0"}
    assert all(
        len(r["values"]) == 1 and r["median"] > 0
        for r in model["images_per_second"]["cpu"].values()
    )
    assert set(model["engine_over"]["wall"]) == {"pure", "baseline_w0"}
    assert model["model_flops"] == forward_flops(build_model("ghost_resnet18", "relu"), CPU)
    assert all(c["wall"] > 0 and c["cpu"] > 0 for c in result["input_pipeline_ms"].values())
    assert {t["target"] for t in result["targets"]} >= {"ghost_resnet18: engine / pure, wall clock"}
    text = doc.read_text()
    assert (
        text.startswith("# Kept title")
        and text.endswith("Kept notes.\n")
        and "stale figures" not in text
    )
    assert "| ghost_resnet18 | 0.568 | fp32 | engine |" in text and "GPU\n\nNot measured yet" in text


def test_bench_accuracy_mode_reports_both_paths(image_folder, tmp_path):
    done = run_bench(
        tmp_path, "--accuracy", *tiny_bench_args(image_folder, tmp_path, tmp_path / "benchmarks.md"),
        "--epochs", "1", "--batch-size", "16",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (run,) = json.loads((tmp_path / "accuracy-cpu.json").read_text())["runs"]
    data = load_cifar10(image_folder)
    for path in ("engine", "plain"):
        (acc,) = run[path]["test_acc"]
        assert 0 <= acc <= 1 and (acc * len(data.test)).is_integer()
    assert "| 0 |" in (tmp_path / "benchmarks.md").read_text()


def test_bench_recipe_mode_times_both_models(image_folder, tmp_path):
    done = run_bench(
        tmp_path, "--recipe", "--device", "cpu", "--data-dir", str(image_folder), "--threads", "1",
        "--epochs", "2", "--ghost-epochs", "2", "--batch-size", "10", "--train-limit", "20",
        "--test-limit", "10", "--results", str(tmp_path), "--doc", str(tmp_path / "benchmarks.md"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "recipe-cpu.json").read_text())
    resnet, ghost = result["models"]["resnet18"], result["models"]["ghost_resnet18"]
    assert len(resnet["epoch_seconds"]) == len(ghost["epoch_seconds"]) == 2
    assert resnet["end_to_end_seconds"] > resnet["seconds"] > sum(resnet["epoch_seconds"]) * 0.99
    assert result["targets"] == []  # the recipe's targets are for a GPU
    assert "### Study recipe: cpu" in (tmp_path / "benchmarks.md").read_text()
