"""Reading a finished (or running) search: tables, report, export.

Owns: Pareto tables and picking a trial (pareto), the HTML report (report_data: what it shows;
figures: its interactive Plotly plots; html and report.js: the page), the deployable bundle
(export; bundle: its artefacts and report.md), and the runtime transfer of a front (transfer).
May import: common, model, measure, guidelines, accuracy, search and errors. Nothing but the
CLI imports review.
"""

from __future__ import annotations

from .bundle import ExportResult
from .export import export_arch
from .html import write_report
from .pareto import ParetoRow, load_records, pareto_rows, pick_trial
from .report_data import ReportData

__all__ = ["ExportResult", "ParetoRow", "ReportData", "export_arch", "load_records", "pareto_rows",
           "pick_trial", "write_report"]
