"""The report of a run directory: learning curves, uncertainty maps, selection behaviour,
uncertainty quality, cost and the annotation-effort verdict (HTML + PNG/SVG + CSV).

Modules: :mod:`~activeseg.report.records` (reading a run back), :mod:`~.verdict` (all
verdict arithmetic), :mod:`~.figures` (matplotlib), :mod:`~.html` (the page),
:mod:`~.context` (what sections share), :mod:`~.sections` (verdict, curves, cost),
:mod:`~.panels` (maps, selection, uncertainty quality), :mod:`~.build`
(:func:`write_report`: all of it into files).
"""

from __future__ import annotations

from activeseg.report.build import write_report
from activeseg.report.records import curves, load_records, load_run, text_summary

__all__ = ["curves", "load_records", "load_run", "text_summary", "write_report"]
