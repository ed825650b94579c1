"""What may be shown or recorded of a text that can hold a secret: the one redaction, used for
every tracking URI or storage URL shown or recorded, every printed error and warning line, and
every run description and failure reason.

A URL's user information (`http://user:password@host`) is removed, keeping scheme, host, port
and path; the values of the variables that hold credentials (MLflow's password and token, the
password of a URL in MLFLOW_TRACKING_URI) are replaced wherever they appear.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote

# scheme://userinfo@ : the userinfo ends at the last "@" before the host (a password may hold "@").
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#'\"`<>]*)@")
SECRET_VARIABLES = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
MASK = "***"
MIN_SECRET = 8


def redacted(text: str) -> str:
    """`text` without credentials: URLs without their userinfo, secret values masked."""
    text = _USERINFO.sub(lambda m: m["scheme"], text)
    for secret in _secrets():
        text = text.replace(secret, MASK)
    return text


def _secrets() -> list[str]:
    """The secrets this process holds, longest first so that one containing another is masked
    whole; at least MIN_SECRET characters (MLflow's basic-auth asks for 12): a short value would
    mask ordinary words, an option's value among them."""
    values = [os.environ.get(name, "") for name in SECRET_VARIABLES]
    userinfo = _USERINFO.match(os.environ.get("MLFLOW_TRACKING_URI", ""))
    password = userinfo["userinfo"].partition(":")[2] if userinfo else ""
    if password:
        values += [password, unquote(password)]
    return sorted({v for v in values if len(v) >= MIN_SECRET}, key=len, reverse=True)
