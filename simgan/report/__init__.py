"""Validation plots and the report."""
