"""The package version, in a leaf module so that anything (bundles, the CLI) can read it
without importing the package's heavier parts."""

__version__ = "0.4.0"
