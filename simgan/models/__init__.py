"""Surrogate model families; each file holds a config class beside its networks."""
