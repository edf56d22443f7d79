"""Training: the loss, the optimizer recipes, the step and the loop."""
