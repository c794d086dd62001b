"""Run reports: base versus tuned with confidence intervals, curves and an overfitting verdict, forgetting,
the bias probe, data and cost (``build_report``); several runs side by side (``compare_runs``)."""

from tuneforge.report.build import build_report, finish_run
from tuneforge.report.compare import compare_runs

__all__ = ["build_report", "compare_runs", "finish_run"]
