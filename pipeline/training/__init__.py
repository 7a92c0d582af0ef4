"""Training: the job (`run_training`), the Trainer and its state, and evaluation."""
