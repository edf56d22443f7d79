"""Batches of token ids in T5X's feature layout (TensorFlow-free)."""
