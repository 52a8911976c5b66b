"""Business figures in Prometheus' text format, from the report tables (one read per
scrape): redemption attempts by result and channel, vouchers by state per provider, job
runs and durations, events waiting."""

import logging

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from voms.runtime import Runtime
from voms.services.reports.figures import business_figures

log = logging.getLogger(__name__)

# name, Prometheus type, help, labels
_FAMILIES = {
    "redemption_attempts": (
        "voms_redemption_attempts",
        CounterMetricFamily,
        "Redemption-family attempts folded into the rollups, by result code and channel",
        ["service_provider", "channel", "kind", "result_code"],
    ),
    "vouchers": (
        "voms_vouchers",
        GaugeMetricFamily,
        "Vouchers by state as an operator sees it, per provider",
        ["service_provider", "state"],
    ),
    "job_runs_recent": (
        "voms_job_runs_last_24h",
        GaugeMetricFamily,
        "Housekeeping job runs started in the last 24 hours, by outcome",
        ["job", "outcome"],
    ),
    "charges_unsettled": (
        "voms_charges_unsettled",
        GaugeMetricFamily,
        "Redemptions waiting for a charging system's definite answer (docs/charging.md)",
        ["service_provider", "state"],
    ),
    "events_waiting": (
        "voms_events_waiting",
        GaugeMetricFamily,
        "Events not yet delivered: undispatched in the outbox, and per destination its "
        "pending deliveries and dead letters (docs/events.md)",
        ["destination", "state"],
    ),
    "job_last_duration": (
        "voms_job_last_duration_seconds",
        GaugeMetricFamily,
        "Duration of each job's last finished run (in the last 24 hours), with its outcome",
        ["job", "outcome"],
    ),
}


class _Figures(Collector):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self):  # type: ignore[no-untyped-def]
        figures = business_figures(self.rt)
        for key, (name, family_type, text, labels) in _FAMILIES.items():
            family = family_type(name, text, labels=labels)
            for sample_labels, value in figures[key]:
                family.add_metric([sample_labels[label] for label in labels], value)
            yield family


def exposition(rt: Runtime) -> bytes:
    """The business figures as exposition text; empty (and logged) if the database fails,
    so /metrics still shows the process's own figures."""
    registry = CollectorRegistry(auto_describe=False)
    try:
        registry.register(_Figures(rt))
        return generate_latest(registry)
    except SQLAlchemyError as exc:
        log.warning("business metrics unavailable: %s", exc.__class__.__name__)
        return b""
