"""`python -m jaxpt` is the `jaxpt` command."""

from jaxpt.cli.main import main

if __name__ == '__main__':
  main()
