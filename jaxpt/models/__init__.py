"""The frozen backbone: T5 config presets, Flax modules and the `Model` handle."""
