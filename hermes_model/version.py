"""The package version, in a module of its own so that any layer can record it without
importing the package root (whose lazy API names modules of every layer)."""

__version__ = "0.1.0"
