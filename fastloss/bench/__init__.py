"""Benchmark harness: speedup and deviation of wrapped losses against the reference, side by side.

>>> from fastloss.bench import compare, workloads   # doctest: +SKIP
>>> report = compare(loss, {"balanced": fastloss.preset("balanced", loss)}, workloads.topology_workload())
"""

from . import workloads
from .harness import CandidateResult, Report, compare
from .report import markdown_table, plot, to_json, write_json

__all__ = ["CandidateResult", "Report", "compare", "markdown_table", "plot", "to_json", "workloads", "write_json"]
