"""Evaluation: held-out recall, plain-text perplexity and LoCoMo against the baselines."""
