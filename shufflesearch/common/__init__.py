"""Plumbing every stage shares, and nothing else: the YAML reader, rank statistics, the torch
thread setting, output folders. Imports nothing from the rest of the package but errors."""
