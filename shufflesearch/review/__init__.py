"""Reading a finished (or running) search: tables, report, export.

Owns: Pareto tables and picking a trial (pareto), the HTML report (html) and the deployable
bundle (export).
May import: common, model, measure, guidelines, accuracy, search and errors. Nothing but the
CLI imports review.
"""
