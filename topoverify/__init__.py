"""topoverify: executable verification of topological invariance and breakdown in learning."""

__version__ = "0.1.0"
