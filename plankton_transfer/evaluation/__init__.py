"""Evaluation: metrics, figures, the comparison of models, the review trade-off and model cards."""
