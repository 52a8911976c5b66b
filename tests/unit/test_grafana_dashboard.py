"""The example Grafana dashboard asks only for metrics that /metrics exposes."""

import json
import re
from pathlib import Path

from voms.api.business_metrics import _FAMILIES

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"


def test_every_metric_of_the_dashboard_is_exposed() -> None:
    exprs = [
        target["expr"]
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for target in panel["targets"]
    ]
    asked = {name for expr in exprs for name in re.findall(r"\bvoms_[a-z0-9_]+", expr)}
    exposed = set()
    for name, family, _, _ in _FAMILIES.values():
        exposed.add(name + ("_total" if family.__name__.startswith("Counter") else ""))
    assert asked
    assert asked <= exposed
