"""Minimax polynomial approximation (numpy/scipy only): fits, plans and coefficient files."""
