"""Plumbing every stage shares, and nothing else.

Owns: the one YAML reader (yamlio: safe loading, file:line errors, the alias-bomb guard),
settings declared once with their rules (settings: ``setting``, ``check_settings``), rank
statistics (stats: Kendall's tau, Spearman's rho, bootstrap intervals), the torch thread
setting (threads.torch_threads), output folders and whole-file replacement (files).
May import: errors only (the stages below it in the order common < model < measure <
guidelines < accuracy < search < review < cli import it).
"""

from __future__ import annotations

from .settings import SettingError, check_settings, setting
from .yamlio import Located, load_yaml, parse_yaml, read_yaml

__all__ = ["Located", "SettingError", "check_settings", "load_yaml", "parse_yaml", "read_yaml",
           "setting"]
