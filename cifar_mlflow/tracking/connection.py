"""Where runs go, and a check that the tracking server is there before any work starts.

MLflow's own client retries with backoff for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7,
MLFLOW_HTTP_REQUEST_TIMEOUT=120), which is right mid-run and wrong at start-up: `connect()` fails
within ~10 s when an HTTP server is not there or refuses our credentials.
"""

from __future__ import annotations

import os
import time

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

from ..core.errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
REACHABLE_WITHIN_SECONDS = 10.0  # $CIFAR_MLFLOW_SERVER_WAIT overrides it
WAIT_VARIABLE = "CIFAR_MLFLOW_SERVER_WAIT"
# A server that answered /health is there but may be slow: basic-auth hashes the password on
# every request (measured: 4-10 s per request on a loaded 2-core machine without its auth cache).
API_CHECK_SECONDS = 30


class TrackingError(UserError):
    """The tracking server cannot be used; the message says what is wrong and what to do."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def connect() -> str:
    """Point MLflow at the tracking URI and return it; an HTTP server must answer /health within
    REACHABLE_WITHIN_SECONDS (or $CIFAR_MLFLOW_SERVER_WAIT seconds) and accept the credentials
    MLflow will send."""
    uri = tracking_uri()
    if is_http(uri):
        _wait_for_server(uri)
        _check_credentials(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def _wait_for_server(uri: str) -> None:
    deadline = time.monotonic() + float(os.environ.get(WAIT_VARIABLE) or REACHABLE_WITHIN_SECONDS)
    while True:
        try:
            response = requests.get(f"{uri.rstrip('/')}/health", timeout=3)
            if response.ok:
                return
            problem = f"answered HTTP {response.status_code}"
        except requests.RequestException as e:
            problem = f"is unreachable ({type(e).__name__})"
        if time.monotonic() >= deadline:
            raise TrackingError(
                f"tracking server {uri} {problem}: start it (mlflow server --host 127.0.0.1 "
                "--port PORT) or set MLFLOW_TRACKING_URI to a reachable server"
            )
        time.sleep(1.0)


def _check_credentials(uri: str) -> None:
    """/health answers anyone, even on a `--app-name basic-auth` server: one authenticated API
    call, with the credentials MLflow will use (MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN),
    tells whether they work before a run is opened. Secrets never appear in the message."""
    creds = get_default_host_creds(uri)
    try:
        response = http_request(
            creds, "/api/2.0/mlflow/experiments/search", "GET", max_retries=0,
            timeout=API_CHECK_SECONDS, raise_on_status=False, params={"max_results": 1},
        )  # fmt: skip
    except (MlflowException, requests.RequestException) as e:
        why = f"no answer within {API_CHECK_SECONDS} s" if "Timeout" in str(e) else type(e).__name__
        raise TrackingError(
            f"tracking server {uri} is up but failed an MLflow API call ({why}): see its log"
        ) from None
    who = f"user {creds.username!r}" if creds.username else "MLFLOW_TRACKING_TOKEN"
    if response.status_code == 401 and not (creds.username or creds.token):
        raise TrackingError(
            f"tracking server {uri} requires credentials (HTTP 401): set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if response.status_code == 401:
        raise TrackingError(
            f"tracking server {uri} rejected the credentials of {who} (HTTP 401): check "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if response.status_code == 403:
        raise TrackingError(f"tracking server {uri} denies {who} access (HTTP 403): ask its admin")
    if not response.ok:
        raise TrackingError(
            f"tracking server {uri} answered HTTP {response.status_code} to an MLflow API call: "
            "is MLFLOW_TRACKING_URI an MLflow server?"
        )
