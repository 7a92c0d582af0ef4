"""Tracking: the W&B run of a training job, and a reader for offline .wandb files."""
