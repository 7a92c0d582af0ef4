"""MODEL_CARD.md beside summary.json: what was trained, on what, how, how well, and how to redo it."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import RootConfig, as_override, config_diff


def _pct(value) -> str:
    return f"{value:.2f}%" if isinstance(value, (int, float)) else "-"


def write_model_card(run_dir: Path, cfg: RootConfig, summary: dict, plan: dict, data: dict) -> Path:
    """data: path, classes, train_images, val_images (as the run saw them)."""
    overrides = [as_override(k, v) for k, v in config_diff(cfg).items() if k != "trainer.run_dir"]
    expected = cfg.expected or {}
    paper = (f"{expected.get('metric', '')} {expected['value']} ({expected.get('source', '')})"
             if expected.get("value") is not None else "none given in the config")
    best = summary.get("best/val/top1")
    lines = [
        f"# {cfg.model.name}: {run_dir.name}", "",
        f"- **Model**: {cfg.model.name}, {summary['parameters']:,} parameters, {len(data['classes'])} classes",
        f"- **Data**: `{data['path']}`, {data['train_images']:,} train / {data['val_images']:,} val images; classes: "
        + ", ".join(data["classes"][:20]) + (" ..." if len(data["classes"]) > 20 else ""),
        f"- **Recipe**: global batch {plan['global_batch']} ({plan['per_gpu_batch']} per process x "
        f"{plan['world_size']}), peak LR {plan['lr']:.4g}, warmup {plan['warmup_epochs']:g} epochs, "
        f"{cfg.optim.schedule} schedule, {summary['steps']:,} steps ({summary['epochs']:.2f} epochs), "
        f"{summary['precision']}{' channels_last' if summary['channels_last'] else ''}, engine {summary['engine']}",
        "- **Non-default config keys**: " + (", ".join(f"`{o}`" for o in overrides) if overrides else "none"),
        f"- **Result**: final val top-1 {_pct(summary.get('final/val/top1'))}, top-5 "
        f"{_pct(summary.get('final/val/top5'))}; best top-1 {_pct(best)} ({summary.get('val/samples')} images)",
        f"- **Paper number**: {paper}",
        f"- **Cost**: {summary.get('train/img_per_sec') or 0:,.0f} img/s (median), {summary['device_hours']} "
        f"device-hours on {summary['device']} x {summary['world_size']}, {summary['wall_seconds']} s wall",
        f"- **Status**: {summary['status']}",
        *(["- **Rescaled** (trainer.elastic=rescale): " + "; ".join(summary["rescales"])] if summary.get("rescales") else []),
        "",
        "## Reproduce", "",
        "```bash",
        "pipeline train " + " ".join(overrides) + f" trainer.run_dir={run_dir}-repro",
        "```", "",
        "Exported weights: `pipeline export " + str(run_dir) + " --format safetensors|torchscript|onnx`; "
        "predictions: `pipeline predict --checkpoint " + str(run_dir) + " IMAGE...`.", ""]
    path = run_dir / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path
