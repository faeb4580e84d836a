"""Hypothesis strategies for topoverify's property tests and checkers."""
