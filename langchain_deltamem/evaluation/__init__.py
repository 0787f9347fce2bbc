"""Evaluation (``deltamem eval``): held-out recall, plain-text perplexity with an unrelated
memory, and LoCoMo QA against baselines."""
