"""Evaluation: metrics, figures and the comparison of models."""
