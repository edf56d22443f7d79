"""The `jaxpt` command line."""
