"""bench/gpu.sh's own parts, in seconds: the data pack that travels to the GPU machine, and the
bundle that comes back from it and becomes docs/benchmarks.md. (The whole script on a CPU:
`BENCH_TINY=1 OUT=$(mktemp -d) PYTHON=.venv/bin/python bash bench/gpu.sh`, docs/benchmarks.md.)"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime

from bench import gpu_collect, gpu_data, gpu_paths
from cifar_mlflow.core.data import load_cifar10

from .conftest import PROJECT_ROOT, write_image_folder


def test_the_pack_unpacks_to_the_same_images(tmp_path):
    source = write_image_folder(tmp_path / "source")
    packed = tmp_path / "data" / "pack.npz"
    assert gpu_data.pack(source, packed) == {"train": 80, "test": 40}
    unpacked = tmp_path / "unpacked"
    assert gpu_data.unpack(packed, unpacked) == {"train": 80, "test": 40}
    before = load_cifar10(source, 0, 0, 0, 0, cache_dir=tmp_path / "cache")
    after = load_cifar10(unpacked, 0, 0, 0, 0, cache_dir=tmp_path / "cache")
    assert (before.train.images == after.train.images).all()
    assert (before.test.labels == after.test.labels).all()


def test_synthetic_data_has_cifars_layout_and_the_asked_size(tmp_path):
    gpu_data.synthetic(tmp_path, {"train": 50, "test": 20})
    data = load_cifar10(tmp_path, 0, 0, 0, 0, cache_dir=tmp_path / "cache")
    assert data.train.images.shape == (50, 3, 32, 32) and len(data.test) == 20


def runs_per_gpu_result() -> dict:
    environment = {"date": "2026-12-01 23:00 UTC", "device": "cuda", "device_name": "NVIDIA H200",
                   "cpu_count": 16, "load_average_1min": 1.0, "python": "3.12.3",
                   "torch": "2.11.0", "torchvision": "0.26.0", "cuda": "13.0", "cudnn": 91000}  # fmt: skip
    run = {"k": 2, "configs": ["a", "b"], "window_seconds": 4.0, "images_per_second": 60000.0,
           "per_process_images_per_second": [30000.0, 30000.0], "startup_seconds": [5.0, 6.0],
           "max_memory_allocated": [2**30, 2**31], "study_seconds_estimate": 233.3}  # fmt: skip
    return {"mode": "runs_per_gpu", "environment": environment,
            "settings": {"batch_size": 128, "seconds": 4.0, "warmup_steps": 20,
                         "configurations": 7, "train_limit": 0},
            "runs": [{**run, "k": 1, "images_per_second": 40000.0,
                      "study_seconds_estimate": 350.0}, run]}  # fmt: skip


def test_the_bundle_holds_every_result_and_the_page_shows_the_gpu_use(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "new").mkdir(parents=True)
    out.mkdir()
    (work / "new" / "runs_per_gpu-cuda.json").write_text(json.dumps(runs_per_gpu_result()))
    sections = [{"section": "runs-per-gpu", "box_seconds": 50, "start": 1000.0, "end": 1010.0,
                 "exit": 0},
                {"section": "profile", "box_seconds": 20, "start": 1010.0, "end": 1030.0,
                 "exit": 124},
                {"section": "accuracy", "box_seconds": 0, "start": 0, "end": 0, "exit": None,
                 "skipped": "no CIFAR-10 pack carried"}]  # fmt: skip
    (work / "sections.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sections))
    stamp = datetime.fromtimestamp(1005.0).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]
    (out / "nvidia-smi.csv").write_text(f"{stamp}, 80, 4096\n{stamp}, 60, 2048\ncut sho")

    bundle = json.loads(gpu_collect.bundle(work, out).read_text())
    assert set(bundle["results"]) == {"runs_per_gpu-cuda", "gpu_use-cuda"}
    use = {s["section"]: s for s in bundle["results"]["gpu_use-cuda"]["sections"]}
    assert use["runs-per-gpu"]["utilisation_mean"] == 70 and use["runs-per-gpu"]["ended"] == "ok"
    assert use["runs-per-gpu"]["memory_used_max"] == 4096
    assert use["profile"]["ended"] == "timed out" and use["profile"]["utilisation_max"] is None
    assert use["accuracy"]["ended"] == "skipped: no CIFAR-10 pack carried"
    page = (out / "benchmarks.md").read_text()
    assert "### Runs per GPU: cuda (NVIDIA H200, 16 CPUs)" in page
    assert "| 2 | 60000 | 1.50 | 30000 – 30000 | 6.0 | 2.0 | 3.9 |" in page
    assert "the default study, seconds (estimate, best K = 2) | 233.300 | ≤ 300.0 | yes" in page
    assert "| profile | 20 | 20 | timed out | - | - |" in page
    assert "### GPU\n\nNot measured yet" not in page  # the generated placeholder goes with GPU figures

    results, doc = tmp_path / "results", tmp_path / "benchmarks.md"
    results.mkdir()
    doc.write_text((PROJECT_ROOT / "docs" / "benchmarks.md").read_text())
    imported = gpu_collect.take_apart(out / gpu_collect.BUNDLE, results, doc)
    assert imported == ["gpu_use-cuda", "runs_per_gpu-cuda"]
    assert sorted(p.stem for p in results.glob("*.json")) == imported
    assert "### GPU use by section" in doc.read_text()


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(PROJECT_ROOT / "bench" / "gpu.sh")], check=True)


def paths_result(device: str, auto: str, **compiled) -> dict:
    run = {"train_loss": [2.3, 2.1], "training_batch_shapes": 1, "scaler_scale": None,
           "compile_used": False, "compile_fallback": None, "steps": 40,
           "slow_steps": 0}  # fmt: skip
    runs = {"fp32": run, "fp16": {**run, "scaler_scale": 65536.0}, "bf16": run}
    if compiled:
        runs["compiled"] = {**run, **compiled}
    return {"bf16_supported": True, "auto_precision": auto, "runs": runs}


def test_the_gpu_path_checks_fail_on_what_they_are_for():
    import torch

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    once = {"compile_used": True, "slow_steps": 1}
    assert gpu_paths.check(paths_result("cuda", "bf16", **once), cuda, True) == []
    assert gpu_paths.check(paths_result("cpu", "fp32"), cpu, False) == []
    assert gpu_paths.check(paths_result("cuda", "fp16", **once), cuda, True) == [
        "auto precision fp16, expected bf16"]  # fmt: skip
    twice = paths_result("cuda", "bf16", compile_used=True, slow_steps=2)
    assert gpu_paths.check(twice, cuda, True) == ["compiled 2 times in 40 steps"]
    fallback = paths_result("cuda", "bf16", compile_used=False, compile_fallback="no Triton")
    assert gpu_paths.check(fallback, cuda, True) == ["compile fell back: no Triton"]
    ragged = paths_result("cpu", "fp32")
    ragged["runs"]["fp32"] = {**ragged["runs"]["fp32"], "training_batch_shapes": 2}
    ragged["runs"]["fp16"] = {**ragged["runs"]["fp16"], "scaler_scale": None}
    assert gpu_paths.check(ragged, cpu, False) == [
        "fp32: 2 training batch shapes", "fp16 trained without its gradient scaler"]  # fmt: skip
