"""Files we read can be hostile: a pickle payload in a torchvision batch file or among a model's
files never runs (it would write a marker file; the marker never appears, and the user gets one
line). Each hostile file is first shown to run its payload when loaded the naive way, so the
test would catch a loader that let it through."""

from __future__ import annotations

import pickle

import mlflow
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cifar_mlflow.cli import cli
from cifar_mlflow.core.data import DataError, load_cifar10

from .conftest import tiny_train_args, write_torchvision_files


class Payload:
    """Unpickled, it writes `marker`: the code an attacker would run instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize("target", ["data_batch_3", "test_batch", "batches.meta"])
def test_payload_in_a_torchvision_file_never_runs(target, tmp_path, tracking):
    root = write_torchvision_files(tmp_path / "data")
    path = root / "cifar-10-batches-py" / target
    marker = tmp_path / "marker"
    entry = pickle.loads(path.read_bytes())
    entry["labels" if "labels" in entry else "label_names"] = Payload(marker)
    path.write_bytes(pickle.dumps(entry))
    pickle.loads(path.read_bytes())  # the naive way: the payload runs
    assert marker.exists()
    marker.unlink()

    with pytest.raises(DataError, match=f"refused CIFAR-10 file {path}: it holds more than"):
        load_cifar10(root)
    result = CliRunner().invoke(cli, tiny_train_args(root, tracking))
    assert "refused CIFAR-10 file" in one_error_line(result)
    assert not marker.exists()
    assert mlflow.get_experiment_by_name(tracking) is None or not mlflow.search_runs(
        experiment_names=[tracking], output_format="list"
    )


def hostile_model(folder, marker, kind: str):
    """A pt2 model as `mlflow.pytorch` saves it, then tampered with: `pth` adds a pickled
    model.pth (which MLflow prefers to model.pt2) whose unpickling runs the payload; `pt2`
    adds a pickled record to the pt2 archive."""
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    example = torch.zeros(1, 3, 32, 32)
    mlflow.pytorch.save_model(module, folder, serialization_format="pt2",
                              input_example=example.numpy())  # fmt: skip
    data = folder / "data"
    if kind == "pth":
        (data / "pickle_module_info.txt").write_text("pickle")
        (data / "model.pth").write_bytes(pickle.dumps(Payload(marker)))
    else:
        import zipfile

        with zipfile.ZipFile(data / "model.pt2", "a") as archive:
            prefix = archive.namelist()[0].split("/")[0]
            archive.writestr(f"{prefix}/data/constants/extra.pt", pickle.dumps(Payload(marker)))
    return folder


@pytest.mark.parametrize("kind", ["pth", "pt2"])
def test_payload_in_a_registered_models_files_never_runs(kind, tmp_path, tracking, monkeypatch):
    marker = tmp_path / "marker"
    local = hostile_model(tmp_path / "model", marker, kind)
    if kind == "pth":  # the naive way (pickle allowed, MLflow's default): the payload runs
        monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
        with pytest.raises(Exception):  # noqa: B017 (what it loaded is no module)
            mlflow.pytorch.load_model(str(local)).eval()
        assert marker.exists()
        marker.unlink()
    mlflow.set_experiment(tracking)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(local), "model")
    name = f"hostile-{tracking}"
    mlflow.register_model(f"runs:/{run.info.run_id}/model", name)
    image = tmp_path / "cat.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    for uri in (f"models:/{name}/1", f"runs:/{run.info.run_id}/model"):
        result = CliRunner().invoke(cli, ["predict", str(image), "--model-uri", uri])
        line = one_error_line(result)
        assert f"refused model {uri}" in line and "could run code" in line, line
        assert not marker.exists()
