"""The error every checkpoint reader and writer raises for bad input."""


class CheckpointError(ValueError):
  """A checkpoint is missing, malformed or does not match its config."""
