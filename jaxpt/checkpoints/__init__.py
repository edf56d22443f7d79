"""Checkpoint readers and writers: T5X, Hugging Face and jaxpt's own."""
