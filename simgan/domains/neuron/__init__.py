"""The neuron domain: single-neuron projection images (64 x 64, um of neurite per pixel)."""
