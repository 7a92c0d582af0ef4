"""`pipeline config`: the fully resolved config that would run, as YAML; `--diff`: only what differs
from the defaults. `pipeline config --keys` lists every key with its type, default and meaning."""
from __future__ import annotations

import argparse

from pipeline.config import as_override, config_diff, load_config, to_yaml
from pipeline.config.describe import help_text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file")
    p.add_argument("--diff", action="store_true", help="only the keys that differ from the defaults")
    p.add_argument("--keys", action="store_true", help="every config key with its type, default and meaning")


def main(args: argparse.Namespace) -> int:
    if args.keys:
        print(help_text())
        return 0
    cfg = load_config(args.config, args.overrides)
    if not args.diff:
        print(to_yaml(cfg), end="")
        return 0
    for key, value in config_diff(cfg).items():  # as overrides: they reproduce the config on the command line
        print(as_override(key, value))
    return 0
