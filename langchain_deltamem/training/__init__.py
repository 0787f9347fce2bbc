"""Training (``deltamem train``): one episode's loss and the batched objectives, the data-aware
start, the held-out content probe, and the trainer."""
