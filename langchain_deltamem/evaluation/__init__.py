"""Evaluation (``deltamem eval``): paired bootstrap intervals, held-out recall, plain-text
perplexity with an unrelated memory, and LoCoMo QA against baselines."""
