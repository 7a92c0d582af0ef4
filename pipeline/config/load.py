"""Loading a config: defaults < YAML file(s) < dotted CLI overrides (`optim.lr=0.2`).

OmegaConf does the merging and type conversion; this module adds the error messages a user
needs (the bad key, the closest valid key or value) and returns the frozen dataclasses.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config.policy import check_augmentation
from pipeline.config.schema import ConfigError, RootConfig
from pipeline.suggest import did_you_mean


def _all_keys() -> dict[str, Any]:
    # Resolve string annotations (from __future__ import annotations) to classes.
    def walk(cls: type, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        hints = {f.name: f for f in dataclasses.fields(cls)}
        defaults = cls()
        for name in hints:
            value = getattr(defaults, name)
            dotted = f"{prefix}{name}"
            out[dotted] = value
            if dataclasses.is_dataclass(value):
                out.update(walk(type(value), dotted + "."))
        return out

    return walk(RootConfig, "")


def _flatten(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in tree.items():
        dotted = f"{prefix}{k}"
        keys.append(dotted)
        if isinstance(v, dict) and dotted != "expected":
            keys.extend(_flatten(v, dotted + "."))
    return keys


def _check_keys(keys: list[str], source: str) -> None:
    valid = _all_keys()
    for key in keys:
        if key in valid or key.startswith("expected."):
            continue
        hint = did_you_mean(key, valid, cutoff=0.5)
        if not hint:  # a typo in the last component: compare within the same section
            section, _, leaf = key.rpartition(".")
            siblings = [k.rpartition(".")[2] for k in valid if k.rpartition(".")[0] == section]
            hint = did_you_mean(leaf, siblings, cutoff=0.4, prefix=f"{section}." if section else "")
        raise ConfigError(f"unknown config key '{key}' in {source}{hint}")


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config; a top-level `base:` (path or list, relative to the file) is merged first."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"config file includes itself: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    bases = tree.pop("base", [])
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _deep_merge(merged, _read_yaml(path.parent / base, seen + (path.resolve(),)))
    return _deep_merge(merged, tree)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    key, _, raw = item.partition("=")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"override '{item}': the value is not valid YAML ({reason}); "
                          f"quote it for a string: {key.strip()}='\"{raw}\"'") from None
    return key.strip(), value


def _nest(key: str, value: Any) -> dict:
    tree: Any = value
    for part in reversed(key.split(".")):
        tree = {part: tree}
    return tree


def _check_sections(tree: dict, source: str, schema: Any = None, prefix: str = "") -> None:
    """A section (model:, logging.wandb:) must hold keys; `model: 3` would otherwise reach OmegaConf."""
    schema = RootConfig() if schema is None else schema
    for key, value in tree.items():
        default = getattr(schema, key, None)
        if not dataclasses.is_dataclass(default):
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"config section '{prefix}{key}' in {source} must be a mapping of keys "
                              f"(e.g. {prefix}{key}: {{...}}), got {value!r}")
        _check_sections(value, source, default, f"{prefix}{key}.")


def load_config(config_file: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                tree: dict | None = None, tree_source: str = "") -> RootConfig:
    """Build the frozen root config from defaults, an optional YAML file (or an already parsed
    `tree`, e.g. the config stored in a checkpoint) and dotted overrides."""
    layers: list[tuple[str, dict]] = []
    if tree is not None:
        _check_keys(_flatten(tree), tree_source)
        _check_sections(tree, tree_source)
        layers.append((tree_source, tree))
    if config_file:
        tree = _read_yaml(Path(config_file))
        _check_keys(_flatten(tree), str(config_file))
        _check_sections(tree, str(config_file))
        layers.append((str(config_file), tree))
    for item in overrides:
        key, value = _parse_override(item)
        _check_keys([key], "command-line overrides")
        _check_sections(_nest(key, value), f"override '{item}'")
        layers.append((f"override '{item}'", _nest(key, value)))

    merged = OmegaConf.structured(RootConfig)
    for source, tree in layers:
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(tree))
        except (OmegaConfBaseException, TypeError, ValueError) as exc:  # TypeError: a mapping onto a list
            key = getattr(exc, "full_key", "") or (source.split("'")[1].partition("=")[0] if "'" in source else "?")
            expected = _all_keys().get(key)
            kind = type(expected).__name__ if expected is not None else "a different type"
            detail = (getattr(exc, "msg", None) or str(exc) or type(exc).__name__).strip().splitlines()
            raise ConfigError(f"config key '{key}' from {source} has the wrong type: expected {kind}, "
                              f"got {detail[0] if detail else '?'}") from None
    try:
        cfg: RootConfig = OmegaConf.to_object(merged)
    except (OmegaConfBaseException, TypeError, ValueError) as exc:
        detail = (getattr(exc, "msg", None) or str(exc) or type(exc).__name__).strip().splitlines()
        raise ConfigError(f"config cannot be built: {detail[0] if detail else '?'}") from None
    validate(cfg)
    return cfg


_CHOICES = {
    "data.backend": ("auto", "torchvision", "dali", "synthetic"),
    "data.dataset": ("imagefolder", "cifar10", "cifar100", "synthetic"),
    "data.on_bad_image": ("fail", "skip"),
    "data.dali_resize": ("auto", "dali", "torch"),
    "data.shuffle": ("auto", "global", "blocks"),
    "optim.name": ("sgd", "lars", "lamb"),
    "optim.schedule": ("cosine", "step", "multistep", "constant", "triangular"),
    "data.val_crop_mode": ("center", "squash"), "data.val_view": ("torchvision", "fast"),
    "optim.milestones_in": ("epochs", "steps"),
    "trainer.precision": ("auto", "fp32", "bf16", "fp16"),
    "trainer.channels_last": ("auto", "true", "false"),
    "trainer.device": ("auto", "cpu", "cuda"),
    "trainer.engine": ("auto", "single", "ddp", "deepspeed"),
    "trainer.compile": ("auto", "true", "false"),
    "trainer.compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    "trainer.on_checkpoint_error": ("continue", "stop"),
    "trainer.elastic": ("keep", "rescale"),
    "distributed.backend": ("auto", "nccl", "gloo"),
    "logging.progress": ("auto", "bar", "lines", "none"),
    "logging.wandb.mode": ("online", "offline", "disabled", "auto"),
    "model.variant": ("v1", "v1.5"),
    "model.projection": ("", "A", "B", "C"),
    "data.interpolation": ("bilinear", "bicubic"),
    "optim.loss": ("ce", "bce"),
}

_CASE_FREE = ("trainer.channels_last", "trainer.compile")


def get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


_SIGNED = ("trainer.seed", "model.gate_bias_init")  # numbers that may be negative
_FRACTIONS = ("data.hflip", "data.crop_fraction", "model.drop_rate", "model.shortcut_dropout",
              "optim.label_smoothing", "trainer.ema_decay", "data.random_erase", "optim.bce_target_thresh",
              "model.drop_path_rate", "data.dali_hw_decoder_load")


def _numbers(cfg: Any, prefix: str = ""):
    """(dotted key, number) for every int or float in the config, tuples element by element."""
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _numbers(value, key + ".")
        elif isinstance(value, (tuple, list)):
            yield from ((key, v) for v in value if isinstance(v, (int, float)) and not isinstance(v, bool))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, value


def _check_numbers(cfg: RootConfig) -> None:
    """No NaN or infinity anywhere (a NaN learning rate trains garbage), no negative counts or rates."""
    for key, value in _numbers(cfg):
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value}")
        if value < 0 and key not in _SIGNED:
            raise ConfigError(f"config key '{key}' must not be negative, got {value}")


def validate(cfg: RootConfig) -> None:
    for key, choices in _CHOICES.items():
        value = get(cfg, key)
        if key in _CASE_FREE:  # YAML's true/false arrive as "True"/"False" in a string field
            value = str(value).lower()
        if value not in choices:
            raise ConfigError(f"config key '{key}' is '{value}', expected one of {', '.join(choices)}"
                              + did_you_mean(str(value), choices))
    _check_numbers(cfg)
    positive = ("data.batch_size", "data.image_size", "optim.accumulation", "trainer.log_every", "trainer.epochs",
                "data.repeat_aug", "trainer.ema_every", "data.shuffle_window", "data.remote_retries")
    for key in positive:
        if get(cfg, key) < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {get(cfg, key)}")
    if min(cfg.data.std) <= 0:
        raise ConfigError(f"config key 'data.std' must be > 0 in every channel, got {list(cfg.data.std)}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"config key 'optim.lr' must be > 0, got {cfg.optim.lr}")
    for key in _FRACTIONS:
        if not 0 <= get(cfg, key) <= 1:
            raise ConfigError(f"config key '{key}' is a fraction: it must be within [0, 1], got {get(cfg, key)}")
    _check_sizes(cfg)
    check_augmentation(cfg)
    if cfg.distributed.zero_stage not in (0, 1, 2):
        raise ConfigError(f"config key 'distributed.zero_stage' must be 0, 1 or 2, got {cfg.distributed.zero_stage}")


def _check_sizes(cfg: RootConfig) -> None:
    """Progressive resizing: a ramp that goes forward in epochs, sizes the step can reach."""
    d = cfg.data
    if d.crop_fraction <= 0:
        raise ConfigError(f"config key 'data.crop_fraction' must be > 0, got {d.crop_fraction}")
    if d.image_size_start <= 0 or d.image_size_start == d.image_size:
        return
    if d.dataset in ("cifar10", "cifar100"):
        raise ConfigError(f"data.image_size_start={d.image_size_start}: progressive resizing needs ImageNet-style "
                          f"images (dataset imagefolder or synthetic), not {d.dataset}'s fixed 32 px")
    start, end = d.size_ramp
    if end <= start:
        raise ConfigError(f"config key 'data.size_ramp' must be [start epoch, end epoch] with end > start, got "
                          f"{list(d.size_ramp)} (image_size_start={d.image_size_start} -> image_size={d.image_size})")
    if d.size_step < 1:
        raise ConfigError(f"config key 'data.size_step' must be >= 1, got {d.size_step}")
    if d.image_size_start % d.size_step or d.image_size % d.size_step:
        raise ConfigError(f"data.image_size_start={d.image_size_start} and data.image_size={d.image_size} must be "
                          f"multiples of data.size_step={d.size_step}")


def to_dict(cfg: RootConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def to_yaml(cfg: RootConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def flat_values(tree: dict, prefix: str = "") -> dict:
    """{dotted key: value} of a config tree; `expected` stays one free-form value."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "expected":
            out.update(flat_values(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_diff(cfg: RootConfig) -> dict:
    """{dotted key: value} where cfg differs from the defaults: as key=value overrides, the config."""
    defaults, chosen = flat_values(to_dict(RootConfig())), flat_values(to_dict(cfg))
    return {k: v for k, v in chosen.items() if defaults.get(k) != v}


def as_override(key: str, value: Any) -> str:
    """key=value, the value in YAML flow style (what _parse_override reads back)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return f"{key}={text.removesuffix('...').strip()}"
