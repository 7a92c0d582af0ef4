"""`pipeline` command line: train, eval, models, make-demo-data, check-data, bench."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Before torch is imported (it reads this once): CPU tensors of 2 MB and more get transparent huge
# pages, so a fresh 38 MB image batch takes ~20 page faults instead of ~9,400. On CPU this made
# a fresh DALI batch 4.5x cheaper to allocate (docs/benchmarks.md); it is a no-op where the
# kernel has THP disabled.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

EXIT_CONFIG = 2
EXIT_FAILED = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description="Distributed ResNet training on ImageNet-style data.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("train", "train a model (defaults: the demo job)"),
                       ("eval", "evaluate a checkpoint on the validation split")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", "-c", help="YAML config file (e.g. configs/imagenet/resnet50.yaml)")
        if name == "eval":
            p.add_argument("--checkpoint", help="checkpoint file (default: newest in trainer.run_dir)")
        p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    sub.add_parser("models", help="list registry models with parameter counts")
    p = sub.add_parser("make-demo-data", help="write the demo dataset (real JPEGs, ImageNet layout)")
    p.add_argument("dir", help="output folder")
    p.add_argument("--size", type=int, default=80, help="image side in pixels (500 for ImageNet-sized JPEGs)")
    p.add_argument("--train-per-class", type=int, default=130)
    p.add_argument("--val-per-class", type=int, default=30)
    for name, text in (("sweep", "run a set of configs x seeds as one experiment group (locally or via sbatch)"),
                       ("degradation", "He 2015 Fig. 6: plain-20/56 vs ResNet-20/56 training error")):
        p = sub.add_parser(name, help=text)
        p.add_argument("args", nargs=argparse.REMAINDER)
    p = sub.add_parser("compare", help="compare runs (run dirs, offline W&B runs, entity/project/id)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p = sub.add_parser("check-data", help="scan a dataset: classes, counts, undecodable files, empty classes")
    p.add_argument("dir")
    p.add_argument("--workers", type=int, default=0, help="decode processes (default: all cores)")
    p = sub.add_parser("bench", help="benchmarks: `pipeline bench train --help`, `pipeline bench data --help`")
    p.add_argument("what", choices=["train", "data"])
    p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _one_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    # Errors re-raised from DataLoader workers carry the worker traceback: its last line is the cause.
    last = lines[-1]
    return last.split(": ", 1)[1] if len(lines) > 1 and ": " in last and "Error" in last.split(": ", 1)[0] else lines[0]


PASSTHROUGH = ("sweep", "degradation", "compare", "bench")  # subcommands with their own parsers


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PASSTHROUGH:
        # argparse.REMAINDER drops leading --options; hand the rest over untouched.
        args = argparse.Namespace(command=argv[0], args=argv[1:] if argv[0] != "bench" else argv[2:],
                                  what=argv[1] if argv[0] == "bench" and len(argv) > 1 else None)
        if argv[0] == "bench" and args.what not in ("train", "data"):
            _parser().parse_args(argv)  # prints the usage error
    else:
        args = _parser().parse_args(argv)
    from pipeline.config import ConfigError, load_config

    try:
        if args.command == "models":
            return _models()
        if args.command == "make-demo-data":
            from pipeline.data.demo import make_demo_data

            root = Path(args.dir)
            if root.exists() and any(root.iterdir()):
                print(f"error: {root} already exists and is not empty", file=sys.stderr)
                return EXIT_FAILED
            make_demo_data(root, args.train_per_class, args.val_per_class, args.size)
            print(f"demo dataset written to {root}")
            return 0
        if args.command == "sweep":
            from pipeline.sweep import main as sweep_main

            return sweep_main(args.args)
        if args.command == "degradation":
            from pipeline.degradation import main as degradation_main

            return degradation_main(args.args)
        if args.command == "compare":
            from pipeline.compare import main as compare_main

            return compare_main(args.args)
        if args.command == "check-data":
            from pipeline.data.check import check_data

            return check_data(Path(args.dir), args.workers)
        if args.command == "bench":
            if args.what == "data":
                from pipeline.bench_data import main as bench_data_main

                return bench_data_main(args.args)
            from pipeline.bench import main as bench_main

            return bench_main(args.args)
        cfg = load_config(args.config, args.overrides)
        if args.command == "train":
            from pipeline.train import run_training

            _, code = run_training(cfg)
            return code
        if args.command == "eval":
            from pipeline.evaluate import run_eval

            from pipeline.distributed import world_info_from_env

            result = run_eval(cfg, args.checkpoint)
            if world_info_from_env().rank == 0:
                print(json.dumps(result))
            return 0
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line for the user; PIPELINE_DEBUG=1 for the trace
        import os

        from pipeline.distributed import world_info_from_env

        if os.environ.get("PIPELINE_DEBUG"):
            raise
        rank = world_info_from_env().rank
        prefix = f"error (rank {rank})" if world_info_from_env().world_size > 1 else "error"
        print(f"{prefix}: {_one_line(exc)}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    return 0


def _models() -> int:
    from pipeline.config import ModelConfig
    from pipeline.models import build_model, count_parameters, get_spec, model_names

    for name in model_names():
        spec = get_spec(name)
        n = count_parameters(build_model(ModelConfig(name=name)))
        print(f"{name:<20} {n:>12,}  {spec.family:<8} {spec.default_classes:>4} classes  {spec.paper}")
    print("timm/<name>          any timm model, e.g. timm/resnet50d")
    return 0


if __name__ == "__main__":
    sys.exit(main())
