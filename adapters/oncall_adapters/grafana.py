"""Grafana alerting's webhook contact point.

Grafana's notifier is Alertmanager's: the body is Alertmanager's webhook format (``alerts`` with
``status``, ``labels``, ``annotations``, ``fingerprint``, ``generatorURL``) plus Grafana's own
fields (``silenceURL``, ``dashboardURL``, ``panelURL``, ``valueString``, ``orgId``, ``state``).
One event per alert, keyed by its ``fingerprint`` (Grafana 9+ sends one; for older ones the same
hash of the labels is computed here), so the resolved notification closes what the firing one
opened. Grafana does not retry a failed webhook (its next group interval sends again).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oncall_adapters.alertmanager import AlertmanagerAdapter, link, notification_alerts
from oncall_server.hookspecs import Adapter, AdapterContext, hookimpl
from oncall_server.ingest.model import NormalizedEvent

_GRAFANA_LINKS = (
    ("silence_url", "silenceURL"),
    ("dashboard_url", "dashboardURL"),
    ("panel_url", "panelURL"),
    ("image_url", "imageURL"),
)


class GrafanaAdapter(AlertmanagerAdapter):
    name = "grafana"
    # Grafana does not retry a refused webhook whatever its status: the default (429) is as good.
    overload_http_status = 429

    def parse(self, payload: Any, context: AdapterContext) -> list[NormalizedEvent]:
        alerts = notification_alerts(payload, "Grafana")
        group = {
            "receiver": payload.get("receiver"),
            "externalURL": payload.get("externalURL"),
            "groupKey": payload.get("groupKey"),
            "orgId": payload.get("orgId"),
        }
        return [
            self.event(alert, index, payload.get("status"), group, context)
            for index, alert in enumerate(alerts)
        ]

    def links(self, alert: dict[str, Any], group: dict[str, Any]) -> dict[str, str]:
        found = {
            "generator_url": link(alert.get("generatorURL")),
            **{name: link(alert.get(field)) for name, field in _GRAFANA_LINKS},
            "grafana_url": link(group.get("externalURL")),
            "value": link(alert.get("valueString")),
        }
        return {k: v for k, v in found.items() if v}


@hookimpl
def oncall_register_adapters(register: Callable[[Adapter], None]) -> None:
    register(GrafanaAdapter())
