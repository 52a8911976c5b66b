"""Reports and analytics: rollups kept by a job, reports that read only them, daily
feeds for a data warehouse, and business figures for Prometheus.

The console calls :func:`run_report` and :func:`render` like the API and CLI do.
"""

from voms.services.reports.formats import FORMATS, MEDIA_TYPES, check_format, render
from voms.services.reports.queries import BY, GROUP_BY, NAMES, Query, Report, run_report

__all__ = [
    "BY",
    "FORMATS",
    "GROUP_BY",
    "MEDIA_TYPES",
    "NAMES",
    "Query",
    "Report",
    "check_format",
    "render",
    "run_report",
]
