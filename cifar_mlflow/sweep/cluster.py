"""What trials need to run on a Ray cluster of several machines, for `sweep` and `tune`.

The code travels with the trials: Ray's runtime environment ships this package's folder to each
node (py_modules), ahead of whatever that node's Python would import, so a node needs Python and
the project's dependencies but not the project itself, and every trial runs the driver's code.
What a trial on another machine could not reach is refused before anything starts: a tracking
URI that only this machine can open (a sqlite or file store, a relative path: each node would
open its own) and a relative --data-dir (each node would read its own working directory). A
local Ray that the command starts itself runs where the command does, so both still work there.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..core.errors import UserError
from ..tracking.connection import is_http
from ..tracking.sweeps import tag_child

PACKAGE = Path(__file__).resolve().parents[1]  # cifar_mlflow/
NODE_TAG = "ray_node_id"  # on a training run that ran on Ray: the node it ran on


def runtime_env() -> dict:
    """Ray's runtime environment for the trials: this package, as the driver has it."""
    return {"py_modules": [str(PACKAGE)], "excludes": ["__pycache__"]}


def check_reach(address: str | None, uri: str, data_dirs: Iterable[str]) -> None:
    """Refuse, in one line, what the nodes of the cluster at `address` could not reach; None is
    the local Ray the command starts, which can."""
    if not address:
        return
    if not is_http(uri):
        raise UserError(
            f"trials on the Ray cluster {address} cannot open the tracking URI {uri!r}: only this "
            "machine can; set MLFLOW_TRACKING_URI to a tracking server every node reaches "
            "(http://HOST:5000, README: Team setup)"
        )
    relative = sorted({d for d in data_dirs if not Path(d).is_absolute()})
    if relative:
        raise UserError(
            f"--data-dir {relative[0]!r} is relative: each node of the Ray cluster {address} "
            "would read it from its own working directory; give an absolute path that every "
            "node can read (a shared folder)"
        )


def node_tags() -> dict[str, str]:
    """The Ray node this process runs on, as a tag of the training run it records."""
    import ray

    return {NODE_TAG: ray.get_runtime_context().get_node_id()}


def record_node(tracking_uri: str, run_id: str) -> None:
    """Tag a sweep's child run, from its Ray trial, with the node it trains on."""
    tag_child(tracking_uri, run_id, node_tags())
