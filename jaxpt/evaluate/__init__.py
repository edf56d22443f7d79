"""Evaluation: decoding and scoring on a (prompted) frozen model."""
