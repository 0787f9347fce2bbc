"""Evaluation: paired bootstrap intervals, held-out recall, LoCoMo and cost curves."""
