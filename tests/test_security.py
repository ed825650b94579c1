"""A real `mlflow server --app-name basic-auth`: valid credentials work, missing or wrong ones fail
at once with a clear line, and the password ends up in no param, tag, metric or artifact. And
every server the project's docs and scripts start binds 127.0.0.1."""

from __future__ import annotations

import re
import time
import uuid

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from cifar_mlflow.cli import cli

from .conftest import PROJECT_ROOT, MlflowServer, free_port, tiny_train_args
from .processes import SMALL_RUN, serving

ADMIN = "admin"
PASSWORD = f"pw-{uuid.uuid4().hex}"  # unique: any occurrence anywhere is a leak


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth-server")
    config = root / "basic_auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
        f"admin_username = {ADMIN}\nadmin_password = {PASSWORD}\n"
        # Without it every request hashes the password again: seconds each on a loaded CPU.
        "auth_cache_ttl_seconds = 300\n"
    )
    with pytest.MonkeyPatch.context() as env:  # the server process inherits these
        env.setenv("MLFLOW_AUTH_CONFIG_PATH", str(config))
        env.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY", uuid.uuid4().hex)
        server = MlflowServer(root, ("--app-name", "basic-auth"))
    with serving(server):
        yield server


@pytest.fixture
def auth_tracking(auth_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", auth_server.uri)
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_TRACKING_USERNAME",
                 "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):  # fmt: skip
        monkeypatch.setenv(name, "")  # so that monkeypatch removes them again afterwards
        monkeypatch.delenv(name)
    mlflow.set_tracking_uri(auth_server.uri)
    return f"auth-{uuid.uuid4().hex[:8]}"


def train(data_dir, experiment):
    started = time.monotonic()
    result = CliRunner().invoke(
        cli, tiny_train_args(data_dir, experiment, "--epochs", "1", *SMALL_RUN)
    )
    return result, time.monotonic() - started


@pytest.mark.slow
def test_valid_credentials_train_and_the_password_is_recorded_nowhere(
    auth_tracking, image_folder, monkeypatch, tmp_path
):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    result, _ = train(image_folder, auth_tracking)
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output

    [run] = mlflow.search_runs(experiment_names=[auth_tracking], output_format="list")
    assert run.info.status == "FINISHED"
    recorded = [*run.data.params.items(), *run.data.tags.items(), *run.data.metrics]
    assert not [item for item in recorded if PASSWORD in str(item)]
    MlflowClient().download_artifacts(run.info.run_id, "", str(tmp_path / "run"))
    mlflow.artifacts.download_artifacts(
        run.data.tags["model_uri"], dst_path=str(tmp_path / "model")
    )
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    # The run's own files (a FINISHED run keeps no checkpoint), the model's and the predictions.
    assert {"MLmodel", "model.pt2", "curves.png", "best.npz"} <= {p.name for p in files}
    assert not [p for p in files if PASSWORD.encode() in p.read_bytes()]


@pytest.mark.parametrize("text, shown", [
    ("on http://admin:pw-1234567@127.0.0.1:5000/x", "on http://127.0.0.1:5000/x"),
    ("'https://u:p@ss:w@host' and postgresql://a:b@db/x", "'https://host' and postgresql://db/x"),
    ("sqlite:///mlflow.db, models:/cifar10@champion, a@b.c", None),
    ("token tok-secret-value here", "token *** here"),
    ("the password is hunter2hunter2 (%)", "the password is *** (%)"),
])  # fmt: skip
def test_one_redaction_for_uris_and_secrets(text, shown, monkeypatch):
    from cifar_mlflow.core.redaction import redacted

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-secret-value")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://admin:hunter2hunter2@[bad")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "relu")  # too short to mask: a word
    assert redacted(text) == (shown or text)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://admin:hunter2hunter2@host:5000")
    assert redacted(text) == (shown or text)


def everything_recorded(client: MlflowClient, experiment: str, folder) -> list[str]:
    """Every param, tag (the description among them), metric name, dataset input and artifact
    of every run and logged model in `experiment`, as text; artifacts downloaded to `folder`."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id])
    texts = []
    for run in runs:
        texts += [f"{k}={v}" for k, v in [*run.data.params.items(), *run.data.tags.items()]]
        texts += list(run.data.metrics)
        texts += [str(d.dataset) for d in run.inputs.dataset_inputs]
        client.download_artifacts(run.info.run_id, "", str(folder / run.info.run_id))
    for model in client.search_logged_models([experiment_id]):
        texts += [f"{k}={v}" for k, v in [*model.params.items(), *model.tags.items()]]
        mlflow.artifacts.download_artifacts(f"models:/{model.model_id}",
                                            dst_path=str(folder / model.model_id))  # fmt: skip
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {"MLmodel", "report.md", "report.html"} <= {p.name for p in files}
    return texts + [p.read_bytes().decode("latin1") for p in files]


@pytest.mark.slow
def test_a_password_in_the_tracking_uri_is_recorded_and_printed_nowhere(
    auth_tracking, auth_server, image_folder, monkeypatch, tmp_path
):
    scheme, address = auth_server.uri.split("://")
    uri = f"{scheme}://{ADMIN}:{PASSWORD}@{address}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    runner = CliRunner()
    report = tmp_path / "report"
    results = [
        runner.invoke(cli, tiny_train_args(image_folder, auth_tracking, "--epochs", "1",
                                           *SMALL_RUN)),  # fmt: skip
        runner.invoke(cli, ["compare", "--experiment", auth_tracking, "--output-dir", str(report)]),
    ]
    assert [r.exit_code for r in results] == [0, 0], [r.output for r in results]
    assert f"{scheme}://{address}/#/experiments/" in results[0].output  # the run's link, shown
    # Error paths whose line names the server: an experiment it lacks, the server away.
    missing = runner.invoke(cli, ["compare", "--experiment", f"no-{auth_tracking}"])
    assert f"on {scheme}://{address}" in missing.output, missing.output
    monkeypatch.setenv("CIFAR_MLFLOW_SERVER_WAIT", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://{ADMIN}:{PASSWORD}@127.0.0.1:{free_port()}")
    away = runner.invoke(cli, tiny_train_args(image_folder, auth_tracking))
    assert "error: tracking server http://127.0.0.1:" in away.output, away.output
    for result in [*results, missing, away]:
        assert PASSWORD not in result.output + (result.stderr or "")
    texts = everything_recorded(MlflowClient(uri), auth_tracking, tmp_path / "recorded")
    texts += [p.read_bytes().decode("latin1") for p in report.rglob("*") if p.is_file()]
    assert any(f"{scheme}://{address}" in t for t in texts)  # the server is named, bare
    assert [t[:200] for t in texts if PASSWORD in t] == []


@pytest.mark.parametrize(
    "credentials, message",
    [
        (
            {},
            (
                "requires credentials (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD"
            ),
        ),
        (
            {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": "wrong-" + PASSWORD},
            (
                f"rejected the credentials of user '{ADMIN}' (HTTP 401): check "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            ),
        ),
    ],
    ids=["none", "wrong"],
)
@pytest.mark.slow
def test_missing_or_wrong_credentials_fail_fast_in_one_line(
    credentials, message, auth_tracking, auth_server, image_folder, monkeypatch
):
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    result, seconds = train(image_folder, auth_tracking)
    assert result.exit_code == 1
    assert result.output == f"error: tracking server {auth_server.uri} {message}\n"
    assert "wrong-" not in result.output
    assert seconds < 15


# The host option as written in a shell command, a Python argument list, or with `=`; its value
# counts when it is an address or a dotted name (a variable or a word of prose is not a bind).
HOST_OPTION = re.compile(r"""--host["']?(?:\s*,\s*|\s+|=)["']?([^\s"',)\]]+)""")
ADDRESS = re.compile(r"^(\d+(\.\d+){3}|\[?[0-9a-fA-F]*:[0-9a-fA-F:]*\]?|[\w-]+(\.[\w-]+)+)$")
LOCAL_ONLY = {"127.0.0.1", "localhost", "::1"}


def project_text_files():
    for pattern in ("*.md", "*.py", "*.sh", "*.yaml", "*.yml", "*.toml", "MLproject", "Makefile"):
        for path in PROJECT_ROOT.rglob(pattern):
            if not {".venv", ".git", "build"} & set(path.relative_to(PROJECT_ROOT).parts):
                yield path


def test_servers_started_by_docs_and_scripts_bind_127_0_0_1():
    hosts = {
        (path.relative_to(PROJECT_ROOT), value)
        for path in project_text_files()
        for value in HOST_OPTION.findall(path.read_text(errors="replace"))
        if ADDRESS.match(value) or value == "localhost"
    }
    assert hosts, "the scan found no --host at all: the pattern is broken"
    assert {(path, value) for path, value in hosts if value not in LOCAL_ONLY} == set()
    assert ADDRESS.match("0.0.0.0") and ADDRESS.match("::") and not ADDRESS.match("gets")
    # A command without --host gets MLflow's default, which must stay local too.
    from mlflow.cli import cli as mlflow_cli

    for command in (mlflow_cli.commands["server"], mlflow_cli.commands["models"].commands["serve"]):
        [host] = [p for p in command.params if p.name == "host"]
        assert host.default == "127.0.0.1", command.name
