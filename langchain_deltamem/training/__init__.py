"""Training (``deltamem train``, ``deltamem data``): synthetic episodes, one episode's loss and
the objectives, the data-aware start, the held-out content probe, and the trainer."""
