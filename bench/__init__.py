"""Benchmark engine for training-free continual open-vocabulary segmentation."""

__version__ = "0.1.0"
