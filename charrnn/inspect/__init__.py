"""Measuring a model: evaluation, line scores, activations and the unit finder."""
