__version__ = "0.3.0"  # the one source of the package version (pyproject.toml reads it)
