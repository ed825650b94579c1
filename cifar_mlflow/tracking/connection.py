"""Where runs go, and a check that the tracking server is there before any work starts.

MLflow's own client retries with backoff for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7,
MLFLOW_HTTP_REQUEST_TIMEOUT=120), which is right mid-run and wrong at start-up: `connect()` fails
within ~10 s when an HTTP server is not there or refuses our credentials, and at once for a
tracking URI MLflow will not open (an unknown scheme, the retired file store, a database without
its driver, databricks without credentials). `is_permanent` tells a refusal that no retry can
change from a failure that may pass.
"""

from __future__ import annotations

import logging
import os
import re
import time

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

from ..core.errors import UserError
from ..core.redaction import redacted

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
REACHABLE_WITHIN_SECONDS = 10.0  # $CIFAR_MLFLOW_SERVER_WAIT overrides it
WAIT_VARIABLE = "CIFAR_MLFLOW_SERVER_WAIT"
# A server that answered /health is there but may be slow: basic-auth hashes the password on
# every request (measured: 4-10 s per request on a loaded 2-core machine without its auth cache).
API_CHECK_SECONDS = 30
# What the server says when its database had no connection free in time (SQLAlchemy's words).
STORE_BUSY = re.compile(r"QueuePool limit of size \d+ overflow \d+ reached")


class TrackingError(UserError):
    """The tracking server cannot be used; the message says what is wrong and what to do."""


class RunRefused(TrackingError):
    """The tracking server refused, for good, what a run sent (an HTTP 4xx answer other than
    429); `unmarkable`: the run is deleted or no longer readable there, so it cannot be marked
    FAILED either (the message says so)."""

    def __init__(self, message: str, unmarkable: bool = False):
        super().__init__(message)
        self.unmarkable = unmarkable


def http_status(error: BaseException) -> int | None:
    """The HTTP status an MLflow call failed with: from MLflow's error code (a REST answer) or
    the response of an artifact upload; None when the server gave no answer."""
    if isinstance(error, MlflowException):
        return error.get_http_status_code()
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return error.response.status_code
    return None


def is_permanent(error: BaseException) -> bool:
    """A refusal that retrying cannot change: 4xx other than 429 (a deleted run, a refused
    payload, no permission). Connection errors, timeouts (MLflow reports both as 500), 5xx, 429
    (too many requests) and a busy store (`is_store_busy`) may succeed later."""
    status = http_status(error)
    return status is not None and 400 <= status < 500 and status != 429 and not is_store_busy(error)


def is_store_busy(error: BaseException) -> bool:
    """The server's database had no connection free in time: MLflow answers BAD_REQUEST (400)
    to SQLAlchemy's pool timeout when many runs log at once (docs/scale.md). It passes. (A
    database error as such, sqlite's "database is locked" among them, comes as 503.)"""
    return STORE_BUSY.search(str(error)) is not None


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
    else:
        _check_store(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def _check_store(uri: str) -> None:
    """MLflow opens a store at its first call and refuses there, mid-run, what it cannot use:
    one cheap call now says so before any data is decoded, in one line: MLflow's own warnings on
    the way (databricks logs one before refusing) are held back. (An sqlite store is created
    here, as the first run would.)"""
    mlflow_log = logging.getLogger("mlflow")
    level = mlflow_log.level
    mlflow_log.setLevel(logging.ERROR)
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:  # MlflowException, a driver's ImportError, sqlalchemy's, OSError...
        reason = str(e).strip().split(". ")[0].splitlines()[0] if str(e).strip() else ""
        raise TrackingError(
            f"MLflow cannot use the tracking URI {redacted(uri)!r} ({type(e).__name__}: "
            f"{redacted(reason)}): set "
            "MLFLOW_TRACKING_URI to a server (http://127.0.0.1:5000) or a database "
            "(sqlite:///mlflow.db)"
        ) from None
    finally:
        mlflow_log.setLevel(level)


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
                f"tracking server {redacted(uri)} {problem}: start it (mlflow server --host "
                "127.0.0.1 --port PORT) or set MLFLOW_TRACKING_URI to a reachable server"
            )
        time.sleep(1.0)


def _check_credentials(uri: str) -> None:
    """/health answers anyone, even on a `--app-name basic-auth` server: one authenticated API
    call, with the credentials MLflow will use (MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN),
    tells whether they work before a run is opened. Secrets never appear in the message."""
    creds = get_default_host_creds(uri)
    shown = redacted(uri)
    try:
        response = http_request(
            creds, "/api/2.0/mlflow/experiments/search", "GET", max_retries=0,
            timeout=API_CHECK_SECONDS, raise_on_status=False, params={"max_results": 1},
        )  # fmt: skip
    except (MlflowException, requests.RequestException) as e:
        why = f"no answer within {API_CHECK_SECONDS} s" if "Timeout" in str(e) else type(e).__name__
        raise TrackingError(
            f"tracking server {shown} is up but failed an MLflow API call ({why}): see its log"
        ) from None
    who = f"user {creds.username!r}" if creds.username else "MLFLOW_TRACKING_TOKEN"
    if response.status_code == 401 and not (creds.username or creds.token):
        raise TrackingError(
            f"tracking server {shown} requires credentials (HTTP 401): set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if response.status_code == 401:
        raise TrackingError(
            f"tracking server {shown} rejected the credentials of {who} (HTTP 401): check "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if response.status_code == 403:
        raise TrackingError(f"tracking server {shown} denies {who} access (HTTP 403): ask its "
                            "admin")
    if not response.ok:
        raise TrackingError(
            f"tracking server {shown} answered HTTP {response.status_code} to an MLflow API call: "
            "is MLFLOW_TRACKING_URI an MLflow server?"
        )
