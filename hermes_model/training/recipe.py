"""Training recipes: TOML files (``train/recipes/*.toml``) read into frozen dataclasses.

A recipe names everything a run needs::

    name = "hippocampus"
    base = "other.toml"        # optional: start from another recipe (tables merge, arrays and
                               # empty tables replace: pos_weight = {} clears the base's weights)
    seed = 0
    output = "runs/hippocampus"            # relative to the working directory
    [model]                                # a preset plus ModelConfig overrides
    preset = "hermes-r-small"
    modality_prior = true
    [[datasets]]                           # one entry per dataset card
    card = "../datasets/hippocampus.toml"  # relative to this recipe's folder
    weight = 1.0                           # probability of drawing a patch from it (normalised)
    split = "train"
    subset = 1.0                           # fraction of the split used (transfer learning)
    spacing = [4.0, 4.0, 2.5]              # optional: this dataset's (task group's) spacing, mm
    [preprocess]  spacing, patch_size, ct_clip, mr_percentiles (PreprocessConfig)
    [train]       batch size, iterations, AMP, grad clip, workers, cache, initialisation
    [optimizer]   lamb | adamw, lr, betas, weight decay, eps
    [schedule]    warm-up, then poly | exponential | constant decay
    [loss]        lambda_dice, dice_smooth, dice_reduction, pos_weight (task id -> weight)
    [augment]     see AugmentConfig
    [ema]         enabled, decay
    [validation]  every N iterations, split, sliding-window overlap

Unknown keys are a ConfigError that names the key and the file. Torch-free.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib

from hermes_model.config import PreprocessConfig, model_config
from hermes_model.errors import ConfigError
from hermes_model.training.settings import (
    AugmentConfig,
    DatasetEntry,
    EMASettings,
    LossSettings,
    ModelSpec,
    OptimizerSettings,
    ScheduleSettings,
    TrainSettings,
    ValidationSettings,
)

__all__ = ["Recipe", "load_recipe"]  # its sections: hermes_model.training.settings


@dataclass(frozen=True)
class Recipe:
    name: str
    source: Path
    model: ModelSpec
    datasets: tuple[DatasetEntry, ...]
    preprocess: PreprocessConfig
    train: TrainSettings
    optimizer: OptimizerSettings
    schedule: ScheduleSettings
    loss: LossSettings
    augment: AugmentConfig
    ema: EMASettings
    validation: ValidationSettings
    seed: int = 0
    output: str = ""
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (for checkpoints' provenance)."""
        return _jsonable(dataclasses.asdict(self))


_SECTIONS: dict[str, type] = {
    "train": TrainSettings,
    "optimizer": OptimizerSettings,
    "schedule": ScheduleSettings,
    "loss": LossSettings,
    "augment": AugmentConfig,
    "ema": EMASettings,
    "validation": ValidationSettings,
}
_TOP = {"name", "description", "seed", "output", "base", "model", "datasets", "preprocess"}
_TOP |= set(_SECTIONS)


def load_recipe(path: str | Path, **overrides: Any) -> Recipe:
    """Read the recipe at ``path``; ``overrides`` replace values before checking.

    Override keys are dotted or double-underscored paths: ``{"train.iterations": 10}``,
    ``train__iterations=10``, ``seed=3``, ``{"datasets.0.subset_seed": 2}``. A card path set by
    an override is relative to the recipe's folder, like one in the file.
    """
    source = Path(path).resolve()
    raw = _read_with_base(source, set())
    for key, value in overrides.items():
        _apply_override(raw, key, value, source)
    return _build(raw, source)


def _read_with_base(source: Path, seen: set[Path]) -> dict[str, Any]:
    if not source.is_file():
        raise ConfigError(f"recipe {source} does not exist; check the path")
    if source in seen:
        raise ConfigError(f"recipe {source}: 'base' chain loops back to itself; break the cycle")
    try:
        data = tomllib.loads(source.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"recipe {source}: not valid TOML ({error}); fix the syntax") from error
    for entry in data.get("datasets", []):
        if isinstance(entry, dict) and isinstance(entry.get("card"), str):
            entry["card"] = str((source.parent / entry["card"]).resolve())
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"recipe {source}: 'base' must be a file name, got {base!r}")
    merged = _read_with_base((source.parent / base).resolve(), seen | {source})
    merged.pop("name", None)
    merged.pop("output", None)
    merged.pop("description", None)
    return _merge(merged, data)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        # An empty table is the only way TOML can say "none of the base's entries" (a recipe for
        # one dataset clearing per-task weights that name another dataset's tasks).
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _apply_override(raw: dict[str, Any], key: str, value: Any, source: Path) -> None:
    parts = key.replace("__", ".").split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"override {key!r} for {source}: {part!r} is not an index below {len(node)}"
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if i == 0 and part not in _TOP - {"base"}:
            raise ConfigError(
                f"override {key!r} for {source}: unknown section {part!r}; "
                f"known: {', '.join(sorted(_TOP - {'base'}))}"
            )
        if last:
            if parts[0] == "datasets" and part == "card" and isinstance(value, str):
                value = str((source.parent / value).resolve())
            node[part] = value
        else:
            node = node.setdefault(part, {})


def _build(raw: dict[str, Any], source: Path) -> Recipe:
    unknown = sorted(set(raw) - _TOP)
    if unknown:
        raise ConfigError(
            f"recipe {source}: unknown key {unknown[0]!r}; known top-level keys: "
            f"{', '.join(sorted(_TOP))}"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"recipe {source}: 'name' is required (a non-empty string)")
    sections = {k: _section(cls, raw.get(k, {}), k, source) for k, cls in _SECTIONS.items()}
    recipe = Recipe(
        name=name,
        source=source,
        model=_model(raw.get("model", {}), source),
        datasets=_datasets(raw.get("datasets"), source),
        preprocess=_preprocess(raw.get("preprocess", {}), source),
        seed=_coerce(raw.get("seed", 0), int, "seed", source),
        output=_coerce(raw.get("output", f"runs/{name}"), str, "output", source),
        description=_coerce(raw.get("description", ""), str, "description", source),
        **sections,
    )
    _check(recipe)
    return recipe


def _section(cls: type, table: Any, name: str, source: Path) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"recipe {source}: [{name}] must be a table")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(table) - set(hints))
    if unknown:
        raise ConfigError(
            f"recipe {source}: unknown key '{name}.{unknown[0]}'; known keys in [{name}]: "
            f"{', '.join(sorted(hints))}"
        )
    values = {k: _coerce(v, hints[k], f"{name}.{k}", source) for k, v in table.items()}
    return cls(**values)


def _coerce(value: Any, hint: Any, where: str, source: Path) -> Any:
    """Check ``value`` against the type ``hint``; lists become tuples, ints become floats."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"recipe {source}: '{where}' must be {expected}, got {value!r}")

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), where, source)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        return float(value)
    if hint is str or hint is Path:
        if not isinstance(value, str | Path):
            raise bad("a string")
        return hint(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise bad("a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where, source) for v in value)
        if len(value) != len(args):
            raise bad(f"a list of {len(args)} values")
        return tuple(_coerce(v, a, where, source) for v, a in zip(value, args, strict=True))
    if origin in (Mapping, dict):
        if not isinstance(value, dict):
            raise bad("a table")
        key_type, value_type = args
        out = {}
        for k, v in value.items():
            try:
                key = key_type(k)
            except ValueError as error:
                raise bad(f"a table with {key_type.__name__} keys") from error
            out[key] = _coerce(v, value_type, f"{where}.{k}", source)
        return out
    raise bad(str(hint))


def _model(table: Any, source: Path) -> ModelSpec:
    if not isinstance(table, dict) or not isinstance(table.get("preset"), str):
        raise ConfigError(f"recipe {source}: [model] needs preset = '<name>' (e.g. hermes-r-base)")
    overrides = {k: v for k, v in table.items() if k != "preset"}
    try:
        config = model_config(table["preset"], **overrides)
    except ConfigError as error:
        raise ConfigError(f"recipe {source}: [model]: {error}") from error
    return ModelSpec(table["preset"], overrides, config)


def _datasets(entries: Any, source: Path) -> tuple[DatasetEntry, ...]:
    if not isinstance(entries, list) or not entries:
        raise ConfigError(
            f"recipe {source}: no [[datasets]]; add at least one entry with card = '<path>'"
        )
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "card" not in entry:
            raise ConfigError(f"recipe {source}: datasets[{i}] needs card = '<path>'")
        entry = dict(entry, card=str(entry["card"]))
        built = _section(DatasetEntry, entry, f"datasets.{i}", source)
        built = dataclasses.replace(built, card=(source.parent / built.card).resolve())
        try:
            built.load()
        except ConfigError as error:
            raise ConfigError(f"recipe {source}: datasets[{i}]: {error}") from error
        out.append(built)
    return tuple(out)


def _preprocess(table: Any, source: Path) -> PreprocessConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"recipe {source}: [preprocess] must be a table")
    try:
        return PreprocessConfig.from_dict(table)
    except (ConfigError, TypeError) as error:
        raise ConfigError(f"recipe {source}: [preprocess]: {error}") from error


_CHOICES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("train", "amp", ("auto", "none", "fp16", "bf16")),
    ("train", "cache_dtype", ("float16", "float32")),
    ("train", "trainable", ("all", "new_tasks")),
    ("optimizer", "name", ("lamb", "adamw")),
    ("schedule", "decay", ("poly", "exponential", "constant")),
    ("schedule", "warmup_shape", ("linear", "exponential")),
    ("loss", "dice_reduction", ("sample", "batch")),  # losses.DICE_REDUCTIONS
)


def _check(r: Recipe) -> None:
    def fail(key: str, problem: str) -> None:
        raise ConfigError(f"recipe {r.source}: '{key}' {problem}")

    for section, key, allowed in _CHOICES:
        if getattr(getattr(r, section), key) not in allowed:
            fail(f"{section}.{key}", f"must be one of {allowed}")
    t, a = r.train, r.augment
    for key, value, low in (
        ("seed", r.seed, 0),
        ("train.batch_size", t.batch_size, 1),
        ("train.iterations", t.iterations, 0),
        ("train.iterations_per_epoch", t.iterations_per_epoch, 1),
        ("train.num_workers", t.num_workers, 0),
        ("train.cache_workers", t.cache_workers, 0),
        ("schedule.warmup_iterations", r.schedule.warmup_iterations, 0),
        ("validation.every", r.validation.every, 0),
        ("validation.max_cases", r.validation.max_cases, 0),
        ("augment.crop_margin", a.crop_margin, 0),
    ):
        if value < low:
            fail(key, f"must be >= {low}, got {value}")
    if t.iterations and r.schedule.warmup_iterations > t.iterations:
        fail("schedule.warmup_iterations", f"exceeds train.iterations ({t.iterations})")
    if bad := [s for s in r.preprocess.patch_size if s % 16]:
        fail("preprocess.patch_size", f"{bad} not divisible by 16 (four 2x downsamplings)")
    if r.optimizer.lr <= 0 or not all(0 <= b < 1 for b in r.optimizer.betas):
        fail("optimizer", "needs lr > 0 and betas in [0, 1)")
    probabilities = {
        "train.foreground_fraction": t.foreground_fraction,
        "augment.p_spatial": a.p_spatial,
        "augment.p_mirror": a.p_mirror,
        "ema.decay": r.ema.decay,
        "validation.overlap": r.validation.overlap,
        **{f"augment.p_intensity.{k}": v for k, v in a.p_intensity.items()},
    }
    if bad_weights := {k: v for k, v in r.loss.pos_weight.items() if v <= 0}:
        fail("loss.pos_weight", f"needs positive weights, got {bad_weights}")
    if any(w < 0 for w in r.loss.deep_supervision):
        fail("loss.deep_supervision", f"needs weights >= 0, got {list(r.loss.deep_supervision)}")
    if bad_weights := {k: v for k, v in r.train.foreground_weights.items() if v <= 0}:
        fail("train.foreground_weights", f"needs positive weights, got {bad_weights}")
    for key, p in probabilities.items():
        if not 0 <= p <= 1 or (key in ("ema.decay", "validation.overlap") and p == 1):
            fail(key, f"must lie in [0, 1], got {p}")
    for key in ("scale_range", "brightness_range", "contrast_range", "gamma_range"):
        low, high = getattr(a, key)
        if not 0 < low <= high:
            fail(f"augment.{key}", f"needs 0 < low <= high, got {(low, high)}")
    from hermes_model.tasks import MODALITIES

    if unknown := sorted(set(a.p_intensity) - set(MODALITIES)):
        fail("augment.p_intensity", f"names unknown modalities {unknown}; use {MODALITIES}")
    if any(axis not in (0, 1, 2) for axis in a.mirror_axes):
        fail("augment.mirror_axes", f"must list axes 0, 1, 2, got {a.mirror_axes}")
    spacings: dict[str, tuple[float, ...]] = {}
    for i, entry in enumerate(r.datasets):
        if entry.weight <= 0 or not 0 < entry.subset <= 1:
            fail(f"datasets.{i}", "needs weight > 0 and 0 < subset <= 1")
        if entry.spacing is not None and min(entry.spacing) <= 0:
            fail(f"datasets.{i}.spacing", f"must be 3 positive mm values, got {entry.spacing}")
        spacing = entry.preprocess_for(r.preprocess).spacing
        name = entry.load().name  # one task group per card name: one spacing for it
        if spacings.setdefault(name, spacing) != spacing:
            fail(f"datasets.{i}.spacing", f"differs from another entry of dataset {name}")


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value
