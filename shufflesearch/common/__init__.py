"""Plumbing every stage shares, and nothing else.

Owns: the one YAML reader (yamlio: safe loading, file:line errors, the alias-bomb guard),
settings declared once with their rules (settings: ``setting``, ``check_settings``), rank
statistics (stats: Kendall's tau, Spearman's rho, bootstrap intervals), the torch thread
setting (threads.torch_threads), output folders and whole-file replacement (files).
May import: errors only (the stages below it in the order common < model < measure <
guidelines < accuracy < search < review < cli import it).
"""
