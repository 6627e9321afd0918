"""Prediction: goals, LightGBM training, scoring, percentiles and metrics."""
