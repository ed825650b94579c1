"""A sweep's grid: which training configurations it holds, as plain data (no MLflow, no processes).

A grid is a base config plus axes. Each axis group maps train options to lists of values and
stands for their product; several groups stand for the union of their products, so a
one-factor-at-a-time study is a list of one-option groups around the base (the "centre" config).
Configurations that come out of several groups are kept once.

Values are checked with the train command's own click types, so a grid accepts exactly what
`cifar-mlflow train` accepts, with the same messages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click
import yaml

from ..core.config import CONFIG_KEYS, DEFAULTS, TrainConfig
from ..core.errors import UserError

# The project's study, around the base config (resnet18, relu, sgd unless changed): 4 + 3 + 2
# configurations, of which the base itself is in all three groups, so 7 distinct ones.
DEFAULT_AXES: tuple[Mapping[str, tuple], ...] = (
    {"activation": ("sigmoid", "relu", "leaky_relu", "gelu")},
    {"optimizer": ("sgd", "momentum", "adam")},
    {"model": ("resnet18", "ghost_resnet18")},
)
FILE_KEYS = ("base", "grid", "seeds")
# One sweep files all its runs in one experiment; its id names every run of it.
SWEEP_WIDE = ("experiment",)
# What makes two runs the same configuration: what compare groups by, plus the seed.
IDENTITY_KEYS = (*CONFIG_KEYS, "seed")


class GridError(UserError):
    """A grid that cannot be expanded; the message names the bad key or value."""


@dataclass(frozen=True)
class Grid:
    base: Mapping[str, object] = field(default_factory=dict)  # options set for every run
    axes: tuple[Mapping[str, tuple], ...] = DEFAULT_AXES
    seeds: int | tuple[int, ...] | None = None  # a count from the base seed on, or the seeds
    source: str = "default study"
    tags: Mapping[str, str] = field(default_factory=dict)  # on every run of the sweep

    def describe_axes(self) -> str:
        """'activation=sigmoid,relu | optimizer=sgd,adam': the grid as one readable line; what
        every group of several holds alike is said once, after them ('; each: device=cpu')."""
        shared = {k: v for k, v in self.axes[0].items()
                  if len(self.axes) > 1 and all(g.get(k) == v for g in self.axes)}  # fmt: skip

        def spelled(group: Mapping[str, tuple]) -> str:
            return " x ".join(f"{k}={','.join(_shown(v) for v in values)}"
                              for k, values in group.items())  # fmt: skip

        groups = " | ".join(spelled({k: v for k, v in g.items() if k not in shared})
                            for g in self.axes)  # fmt: skip
        return groups + (f"; each: {spelled(shared)}" if shared else "")


def expand(
    base: TrainConfig, axes: Sequence[Mapping[str, tuple]], seeds: Sequence[int]
) -> list[TrainConfig]:
    """Every configuration of the grid, each once, seed by seed: a sweep stopped half-way then
    holds whole studies for the first seeds rather than every seed of half the study.
    scikit-learn's ParameterGrid is the union of the groups' products."""
    from sklearn.model_selection import ParameterGrid  # ~0.5 s: loaded when a sweep runs

    configs: dict[str, TrainConfig] = {}
    for seed in seeds:
        for values in ParameterGrid([dict(group) for group in axes]):
            config = dataclasses.replace(base, **{"seed": seed, **values})
            configs.setdefault(config_key(config), config)
    return list(configs.values())


def config_key(config: TrainConfig) -> str:
    """A stable id of what a run learns (not where it is filed): the tag that finds it again."""
    identity = {k: getattr(config, k) for k in IDENTITY_KEYS}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: object, lines: tuple[int, int]):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.lines = key, lines


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives a key twice (which PyYAML would
    otherwise resolve silently to its last value: a grid line lost). Keys brought in by a merge
    (`<<: *base`) may be overridden, as YAML means them to be."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[object, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in first:
                    raise DuplicateKey(key, (first[key], line))
                first[key] = line
        return super().construct_mapping(node, deep=deep)


def load_grid_file(path: str | Path, options: Mapping[str, click.Parameter]) -> Grid:
    """Read and check a YAML grid file:

    base:   {epochs: 40, batch_size: 128}          # any train option, for every run
    grid:                                          # a mapping: the product of its lists;
      - {activation: [sigmoid, relu, gelu]}        # a list of mappings: the union
      - {optimizer: [sgd, adam], lr: [0.1, 0.01]}
    seeds: 3                                       # or a list: [0, 1, 2]
    """
    try:
        document = yaml.load(Path(path).read_text(), Loader=UniqueKeyLoader)
    except OSError as e:
        raise GridError(f"grid file {path}: cannot be read ({e.strerror})") from None
    except DuplicateKey as e:
        raise GridError(
            f"grid file {path}: key {e.key!r} is given twice (lines {e.lines[0]} and "
            f"{e.lines[1]}); YAML would keep only the last: give it once"
        ) from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise GridError(f"grid file {path}: not valid YAML{line}") from None
    where = f"grid file {path}"
    if not isinstance(document, dict):
        raise GridError(f"{where}: expected a mapping with keys {', '.join(FILE_KEYS)}")
    unknown = [k for k in document if k not in FILE_KEYS]
    if unknown:
        raise GridError(
            f"{where}: unknown key {unknown[0]!r} (a grid file has {', '.join(FILE_KEYS)})"
        )
    if "grid" not in document:
        raise GridError(
            f"{where}: no 'grid' key: list the values to sweep, e.g. grid: {{lr: [0.1, 0.01]}}"
        )
    base = check_values(document.get("base") or {}, options, f"{where}: base")
    groups = document["grid"]
    groups = groups if isinstance(groups, list) else [groups]
    axes = tuple(check_axes(g, options, f"{where}: grid[{i}]") for i, g in enumerate(groups))
    if not axes:
        raise GridError(f"{where}: 'grid' is empty: list the values to sweep")
    seeds = document.get("seeds")
    if seeds is not None:
        seeds = check_seeds(seeds, options["seed"], f"{where}: seeds")
        if any("seed" in group for group in axes):
            raise GridError(f"{where}: give the seeds once, under 'seeds' or as a grid axis")
    return Grid(base, axes, seeds, source=str(path))


def check_values(values: object, options: Mapping[str, click.Parameter], where: str) -> dict:
    """{option: value} converted by the train options' click types; names the bad key or value."""
    if not isinstance(values, dict):
        raise GridError(f"{where}: expected a mapping of train options to values")
    checked = {}
    for key, value in values.items():
        name = _option_name(key, options, where)
        if isinstance(value, (list, dict)):
            raise GridError(f"{where}.{key}: expected one value, not a {type(value).__name__}")
        checked[name] = convert(options[name], value, f"{where}.{key}")
    return checked


def check_axes(group: object, options: Mapping[str, click.Parameter], where: str) -> dict:
    if not isinstance(group, dict) or not group:
        raise GridError(f"{where}: expected a mapping of train options to lists of values")
    axes = {}
    for key, values in group.items():
        name = _option_name(key, options, where)
        values = values if isinstance(values, list) else [values]
        if not values:
            raise GridError(f"{where}.{key}: no values: list at least one")
        axes[name] = tuple(
            convert(options[name], v, f"{where}.{key}[{i}]") for i, v in enumerate(values)
        )
    return axes


def check_seeds(seeds: object, seed_option: click.Parameter, where: str) -> int | tuple[int, ...]:
    """`seeds: N` stays a count (the base seed is the first), `seeds: [0, 5]` a list."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise GridError(f"{where}: {seeds} seeds: give at least 1")
        return seeds
    if isinstance(seeds, list) and seeds:
        return tuple(convert(seed_option, s, f"{where}[{i}]") for i, s in enumerate(seeds))
    raise GridError(f"{where}: expected a number of seeds or a list of seeds, got {seeds!r}")


def resolve_seeds(seeds: int | tuple[int, ...], base_seed: int) -> tuple[int, ...]:
    if isinstance(seeds, int):
        return tuple(range(base_seed, base_seed + seeds))
    return seeds


def convert(option: click.Parameter, value: object, where: str) -> object:
    try:
        return option.type.convert(_spell(value), option, None)
    except click.BadParameter as e:
        raise GridError(f"{where}: {e.message}") from None


def build_base(values: Mapping[str, object]) -> TrainConfig:
    return dataclasses.replace(DEFAULTS, **values)


def _option_name(key: object, options: Mapping[str, click.Parameter], where: str) -> str:
    name = str(key).replace("-", "_")
    if name in SWEEP_WIDE:
        raise GridError(f"{where}.{key}: the experiment is one per sweep: give it with --{name}")
    if name not in options:
        raise GridError(f"{where}: {key!r} is not a train option (options: {', '.join(options)})")
    return name


def _shown(value: object) -> str:
    """A value as a person reads it: a float to 4 significant digits (a tuned lr has 17)."""
    return f"{value:.4g}" if isinstance(value, float) else _spell(value)


def _spell(value: object) -> str:
    """YAML gives true/1e-2/40 as bool/float/int; click's types read the command-line spelling."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
