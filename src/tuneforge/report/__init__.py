"""Run reports: base versus tuned with confidence intervals, curves and an overfitting verdict, forgetting,
the bias probe, data and cost (``build_report``); several runs side by side (``compare_runs``).

The report reads run files and never runs a model; the probes it shows are computed by ``tuneforge.probes``.
"""

from tuneforge.report.build import build_report
from tuneforge.report.compare import compare_runs
from tuneforge.report.files import RunFiles

__all__ = ["RunFiles", "build_report", "compare_runs"]
