"""`pipeline` command line: one table of subcommands.

The core commands (train, eval, models, make-demo-data) are defined here; every tool module in
`pipeline.tools` offers `add_arguments(parser)` and `main(args)`, and is imported only when its
command runs. key=value words are config overrides wherever they stand on the line.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

# Before torch is imported (it reads this once): CPU tensors of 2 MB and more get transparent huge
# pages, so a fresh 38 MB image batch takes ~20 page faults instead of ~9,400. On CPU this made
# a fresh DALI batch 4.5x cheaper to allocate (docs/benchmarks.md); it is a no-op where the
# kernel has THP disabled.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

EXIT_CONFIG = 2  # bad input: a config, a dataset or a run directory refused; Slurm does not requeue it
EXIT_FAILED = 1


def _add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file (e.g. configs/imagenet/resnet50.yaml)")


def _add_eval_arguments(p: argparse.ArgumentParser) -> None:
    _add_config_arguments(p)
    p.add_argument("--checkpoint", help="checkpoint: a run directory (its newest), a step-*.pt file or a DeepSpeed ds-step-* folder "
                                        "(default: newest in trainer.run_dir)")


def _add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="output folder")
    p.add_argument("--size", type=int, default=80, help="image side in pixels (500 for ImageNet-sized JPEGs)")
    p.add_argument("--train-per-class", type=int, default=130)
    p.add_argument("--val-per-class", type=int, default=30)


def _add_bench_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_subparsers(dest="what", required=True, metavar="{train,data}")
    for name, module, text in (("train", "bench_train", "the trainer against a bare PyTorch loop"),
                               ("data", "bench_data", "input pipelines against a plain torchvision loader")):
        tool = importlib.import_module(f"pipeline.tools.{module}")
        tool.add_arguments(what.add_parser(name, help=text))
        what.choices[name].set_defaults(run=tool.main)


class PreflightError(RuntimeError):
    """A dataset problem found before torch is imported; reported like a DataError (exit 2)."""


def _preflight(cfg) -> None:
    from pipeline.config.preflight import missing_dataset

    if line := missing_dataset(cfg.data):
        raise PreflightError(line)


def _train(args: argparse.Namespace) -> int:
    from pipeline.config import load_config

    cfg = load_config(args.config, args.overrides)
    _preflight(cfg)
    from pipeline.training.job import run_training

    return run_training(cfg)[1]


def _eval(args: argparse.Namespace) -> int:
    from pipeline.config import load_config

    cfg = load_config(args.config, args.overrides)
    _preflight(cfg)
    from pipeline.training.evaluate import run_eval
    from pipeline.world import world_info_from_env

    result = run_eval(cfg, args.checkpoint)
    world = world_info_from_env()
    if world.rank == 0:
        print(json.dumps(result))
    return 0


def _models(args: argparse.Namespace) -> int:  # noqa: ARG001
    import torch

    from pipeline.config import ModelConfig
    from pipeline.models import build_model, count_parameters, get_spec, model_names

    for name in model_names():
        spec = get_spec(name)
        with torch.device("meta"):  # shapes only: no memory, no initialization (1-2 s for all, not ~30)
            n = count_parameters(build_model(ModelConfig(name=name)))
        print(f"{name:<20} {n:>12,}  {spec.family:<8} {spec.default_classes:>4} classes  {spec.paper}")
    print("timm/<name>          any timm model, e.g. timm/resnet50d")
    return 0


def _make_demo_data(args: argparse.Namespace) -> int:
    from pipeline.data.demo import make_demo_data

    root = Path(args.dir)
    if root.exists() and any(root.iterdir()):
        print(f"error: {root} already exists and is not empty", file=sys.stderr)
        return EXIT_FAILED
    make_demo_data(root, args.train_per_class, args.val_per_class, args.size)
    print(f"demo dataset written to {root}")
    return 0


def _tool(module: str):
    """(add_arguments, main) of a module in pipeline.tools, imported when its command is chosen."""
    tool = importlib.import_module(f"pipeline.tools.{module}")
    return tool.add_arguments, tool.main


# name: (help, takes key=value overrides, how to get (add_arguments, main))
COMMANDS = {
    "train": ("train a model (defaults: the demo job)", True, lambda: (_add_config_arguments, _train)),
    "eval": ("evaluate a checkpoint on the validation split", True, lambda: (_add_eval_arguments, _eval)),
    "eval-parity": ("evaluate a checkpoint through DALI's and torchvision's val views: top-1 each, logit differences",
                    True, lambda: _tool("eval_parity")),
    "models": ("list registry models with parameter counts", False, lambda: (lambda p: None, _models)),
    "make-demo-data": ("write the demo dataset (real JPEGs, ImageNet layout)", False,
                       lambda: (_add_demo_arguments, _make_demo_data)),
    "export": ("export a trained model: safetensors, TorchScript or ONNX (checked against the eager model)", False,
               lambda: _tool("export")),
    "predict": ("classify images with a trained model: top-k with class names, a table or JSON lines", False,
                lambda: _tool("predict")),
    "prepare": ("ImageNet from the official archives or Kaggle's copy, or any dataset, as folders or WebDataset "
                "shards (resumable)", False, lambda: _tool("prepare")),
    "check-data": ("scan a dataset: classes, counts, undecodable files, empty classes", False,
                   lambda: _tool("check_data")),
    "bench": ("benchmarks: `pipeline bench train --help`, `pipeline bench data --help`", False,
              lambda: (_add_bench_arguments, None)),
    "config": ("print the resolved config (YAML), --diff against the defaults, --keys to list every key", True,
               lambda: _tool("show_config")),
    "plan": ("print a job's plan at a launch size: batches, LR, warmup, decay points, steps, time estimate", True,
             lambda: _tool("plan")),
    "compare": ("compare runs (run dirs, offline W&B runs, entity/project/id)", False, lambda: _tool("compare")),
    "sweep": ("run a set of configs x seeds as one experiment group (locally or via sbatch)", True,
              lambda: _tool("sweep")),
    "degradation": ("He 2015 Fig. 6: plain-20/56 vs ResNet-20/56 training error", True,
                    lambda: _tool("degradation")),
}


def _keys_epilog() -> dict:
    """`pipeline train --help` ends with every config key, generated from the schema."""
    from pipeline.config.describe import help_text

    return {"epilog": help_text(), "formatter_class": argparse.RawDescriptionHelpFormatter}


def parse(argv: list[str]) -> argparse.Namespace:
    """Only the chosen command's module is imported; `pipeline --help` lists them all."""
    chosen = argv[0] if argv else None
    takes_overrides = chosen in COMMANDS and COMMANDS[chosen][1]
    overrides = [w for w in argv[1:] if "=" in w and not w.startswith("-")] if takes_overrides else []
    parser = argparse.ArgumentParser(prog="pipeline", description="Distributed ResNet training on ImageNet-style data.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (text, with_overrides, get) in COMMANDS.items():
        keys_listed = name in ("train", "eval") and name == chosen and ("-h" in argv or "--help" in argv)
        p = sub.add_parser(name, help=text, **(_keys_epilog() if keys_listed else {}))
        if name == chosen:
            add_arguments, run = get()
            add_arguments(p)
            if with_overrides:
                p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.2")
            if run is not None:
                p.set_defaults(run=run)
    args = parser.parse_args([w for w in argv if w not in overrides])
    if takes_overrides:
        args.overrides = overrides
    return args


def _one_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    # Errors re-raised from DataLoader workers carry the worker traceback: its last line is the cause.
    last = lines[-1]
    return last.split(": ", 1)[1] if len(lines) > 1 and ": " in last and "Error" in last.split(": ", 1)[0] else lines[0]


def _record_failure(rank: int, line: str) -> None:
    """Under the Slurm launcher, leave "rank R on HOST: error" for its restart-budget message."""
    folder = os.environ.get("PIPELINE_FAILURE_DIR")
    if folder:
        import socket

        host = os.environ.get("SLURMD_NODENAME") or socket.gethostname()  # Slurm's name for the node
        try:
            Path(folder, f"rank-{rank}.txt").write_text(f"rank {rank} on {host}: {line}\n")
        except OSError:
            pass  # the error line above is already in the job log


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    code = _run(args)
    from pipeline.world import world_info_from_env

    if world_info_from_env().world_size > 1:
        # Under torchrun or Slurm with gloo (torch 2.14.1) a rank could abort at interpreter exit,
        # after its work and the process group's teardown were done: "terminate called without an
        # active exception" in C++ static destruction, about 1 run of 10 for 2-rank `pipeline eval`
        # and seen once in 2-rank DeepSpeed training (docs/benchmarks.md). Everything is written
        # and closed by now (checkpoints fsynced, metrics and summary files closed, W&B finished),
        # so flush and leave with the exit code, without the static destructors.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run(args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError
    from pipeline.runlock import RunDirInUse

    try:
        return args.run(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except RunDirInUse as exc:  # another live job's run directory: nothing was written
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line for the user; PIPELINE_DEBUG=1 for the trace
        from pipeline.world import world_info_from_env

        if os.environ.get("PIPELINE_DEBUG"):
            raise
        world = world_info_from_env()
        prefix = f"error (rank {world.rank})" if world.world_size > 1 else "error"
        print(f"{prefix}: {_one_line(exc)}", file=sys.stderr, flush=True)
        _record_failure(world.rank, _one_line(exc))
        return EXIT_CONFIG if _bad_input(exc) else EXIT_FAILED


def _bad_input(exc: Exception) -> bool:
    """A dataset the user must fix (missing, mislabelled, unreadable, a truncated shard): a restart
    would fail the same way. The data module is loaded whenever a DataError was raised."""
    data_types = sys.modules.get("pipeline.data.types")
    return isinstance(exc, PreflightError) or (data_types is not None and isinstance(exc, data_types.DataError))


if __name__ == "__main__":
    sys.exit(main())
