"""The report of one or several results stores: Markdown and HTML tables (format), figures, the report itself
(document: report.md, report.html, CSVs), and the comparison of two stores model by model (compare)."""
from smoothness.report.document import ReportContent, compute_content, render, write_report

__all__ = ["ReportContent", "compute_content", "render", "write_report"]
