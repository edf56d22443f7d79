"""A backbone and a method as one model: loss, logits, scores and decoding."""
