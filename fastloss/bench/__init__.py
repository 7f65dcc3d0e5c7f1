"""Benchmark harness: speedup and deviation of wrapped losses against the reference, side by side.

Usage::

    from fastloss.bench import compare, markdown_table, workloads

    loss = fastloss.TopologicalLoss()
    report = compare(loss, {"balanced": fastloss.preset("balanced", loss)}, workloads.topology_workload())
    print(markdown_table(report))
"""

from . import protocol, workloads
from .deviation import deviation
from .harness import compare
from .report import markdown_table, plot, to_json, write_json
from .results import CandidateResult, Report

__all__ = [
    "CandidateResult", "Report", "compare", "deviation", "markdown_table", "plot", "protocol", "to_json", "workloads",
    "write_json",
]
