"""Training: one episode's loss, batched objectives, probes, the trainer and ``deltamem train``."""
