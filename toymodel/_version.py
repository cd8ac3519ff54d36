"""The package version, in a module of its own: modules below the package's ``__init__`` (the
scan's provenance attributes, its store manifest) read it without importing the public API."""

__version__ = "0.1.0"
