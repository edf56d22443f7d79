"""The error every checkpoint reader and writer raises for bad input."""


class CheckpointError(ValueError):
  """A checkpoint is missing, malformed or does not match its config."""


def check_matches(path: str, what: str, expected: object, found: object) -> None:
  """Raises ValueError naming `path` when a file's `what` differs from the backbone's."""
  if expected != found:
    raise ValueError(f'{path}: {what} does not match the backbone: expected {expected}, '
                     f'found {found}')
