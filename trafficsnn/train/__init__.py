"""Datasets, splits, training loop, metrics, plots and baselines."""
