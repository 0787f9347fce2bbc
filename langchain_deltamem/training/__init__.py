"""Training: synthetic episodes, the episode trainer, held-out recall evaluation."""
