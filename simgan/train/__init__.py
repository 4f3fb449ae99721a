"""The training loop: checkpoints, exact resume, bf16, DDP, MLflow tracking."""
