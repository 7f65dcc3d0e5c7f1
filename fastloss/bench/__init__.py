"""Benchmark harness: speedup and deviation of wrapped losses against the reference, side by side.

Usage::

    from fastloss.bench import compare, markdown_table, workloads

    loss = fastloss.TopologicalLoss()
    report = compare(loss, {"balanced": fastloss.preset("balanced", loss)}, workloads.topology_workload())
    print(markdown_table(report))
"""

from . import workloads
from .harness import CandidateResult, Report, compare
from .report import markdown_table, plot, to_json, write_json

__all__ = ["CandidateResult", "Report", "compare", "markdown_table", "plot", "to_json", "workloads", "write_json"]
