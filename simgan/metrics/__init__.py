"""Separation power, Wasserstein-1, classifier two-sample test, FPD/KPD, features."""
