"""Finetuning: the training loop (CPU / CUDA, AMP, torchrun DDP), data, logs."""
