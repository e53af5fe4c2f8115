"""The run report: matplotlib figures and a self-contained HTML page built from the results store."""

from intertwiner.report.html import build_report, claim_verdicts, render

__all__ = ["build_report", "claim_verdicts", "render"]
