"""simgan: fast generative surrogates for slow physics simulation."""

__version__ = "0.1.0"
