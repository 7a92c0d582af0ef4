"""Config fuzzing: random overrides and random YAML files end in a config or one ConfigError line.

Seeded, in process (`load_config` is what every command calls first), bounded in time; a sample
of the refused ones also goes through the real CLI for the exit code 2 and the single line.
"""
import random
import string
import time

import pytest
import yaml

from pipeline.config import ConfigError, RootConfig, load_config
from pipeline.config.load import _all_keys
from tests.helpers import run_cli

VALUES = ["abc", "", "nan", "-nan", "inf", "-inf", ".inf", "1e309", "-1", "0", "-0.5", "3.7", "1", "true", "null",
          "[1, 2]", "[]", "[0.1, 0.2, 0.3]", "{a: 1}", "{}", "99999999999999999999", "-99999999999999999999",
          "ünïcödé", "日本語", "\u200b", "'quoted'", "\"", "[", "{", ":", "- a", "0x10", "1_000", "~", "=3",
          "resnet50", "bf16", "auto", "cuda", "A", "v1.5"]


def _random_key(rng: random.Random, keys: list[str]) -> str:
    key = rng.choice(keys)
    roll = rng.random()
    if roll < 0.15:  # a typo
        i = rng.randrange(len(key))
        return key[:i] + rng.choice(string.ascii_letters + "._") + key[i + 1:]
    if roll < 0.2:
        return rng.choice(["", ".", "..", "optim.", ".lr", "ünï.lr", "model.name.x", "a" * 300])
    return key


def _scalar(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # written back as a quoted string


def _random_tree(rng: random.Random, keys: list[str], depth: int = 0):
    roll = rng.random()
    if depth > 0 and roll < 0.5:
        return _scalar(rng.choice(VALUES)) if rng.random() < 0.7 else rng.random() * 1e6
    tree = {}
    for _ in range(rng.randint(0, 4)):
        parts = _random_key(rng, keys).split(".")
        part = parts[min(depth, len(parts) - 1)] if rng.random() < 0.8 else parts[0]
        tree[part] = _random_tree(rng, keys, depth + 1) if depth < 3 else rng.choice([1, "x", None, [1]])
    return tree if rng.random() < 0.9 else rng.choice([3, "text", [1, 2], None])


def _outcome(load) -> str:
    """"ok" or "refused"; anything else than a ConfigError fails the test with the input named."""
    try:
        assert isinstance(load(), RootConfig)
        return "ok"
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc), f"multi-line or empty message: {exc!r}"
        return "refused"


def test_random_overrides_and_yaml_files(tmp_path):
    rng = random.Random(20261127)
    keys = sorted(_all_keys())
    start, counts, refused = time.time(), {"ok": 0, "refused": 0}, []
    for i in range(400):
        words = [f"{_random_key(rng, keys)}={rng.choice(VALUES)}" for _ in range(rng.randint(1, 3))]
        try:
            result = _outcome(lambda: load_config(None, words))
        except Exception as exc:  # noqa: BLE001 - name the input that broke it
            raise AssertionError(f"overrides {words} raised {type(exc).__name__}: {exc}") from None
        counts[result] += 1
        if result == "refused" and len(refused) < 6 and i % 7 == 0:
            refused.append(words)
    for i in range(200):
        path = tmp_path / f"fuzz{i}.yaml"
        tree = _random_tree(rng, keys)
        path.write_text(yaml.safe_dump(tree, allow_unicode=True) if rng.random() < 0.9 else rng.choice(
            ["model: [", "{{{", ": :", "\t- x", "base: fuzz0.yaml\nbase: x", "base: " + path.name]))
        try:
            counts[_outcome(lambda: load_config(path))] += 1
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"YAML {path.read_text()!r} raised {type(exc).__name__}: {exc}") from None
    assert counts["ok"] > 20 and counts["refused"] > 300  # both outcomes really exercised
    assert time.time() - start < 60
    for words in refused:  # the same inputs through the CLI: exit 2, one line, no traceback
        proc = run_cli("train", *words, quick=True)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (words, proc.stderr)
        assert proc.stderr.startswith("config error: ")


@pytest.mark.parametrize("override, message", [
    ("data.mean=[0.5]", "config key 'data.mean' from override 'data.mean=[0.5]' has the wrong type: expected tuple, "
                        "got TupleConfig length 1 does not match type hint length 3"),
    ("data.std=[0.2,0,0.2]", "config key 'data.std' must be > 0 in every channel, got [0.2, 0.0, 0.2]"),
])
def test_shapes_of_the_number_lists(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == message
