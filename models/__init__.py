"""Plaintext reference model: the Softmax-only decoder (AERO) and its baselines, data, training."""
