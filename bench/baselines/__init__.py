"""Continual fine-tuning baselines: the same base model, data and evaluation as kNN-CLIP, but with gradients.

What is trained is a residual linear adapter on the pooled mask embeddings of the base model, shared across
tasks and classified against the text embeddings of the vocabulary (see :mod:`bench.baselines.adapter`).
"""
