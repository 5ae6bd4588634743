"""Analyses: pure functions and estimators over arrays (numpy, CuPy or array-API namespaces)."""
