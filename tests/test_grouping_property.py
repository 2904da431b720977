"""Property: for any sequence of alerts, the incidents are exactly the reference model's groups.

The model is the spec's rules, written as plainly as possible: an alert whose
dedup key has an open alert joins that alert's incident; otherwise, with time
grouping, it joins the open window of its severity (a window lasts N minutes
after the last alert that opened or joined it); otherwise it opens an incident.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oncall_server.clock import FakeClock
from oncall_server.ingest.model import NormalizedEvent
from oncall_server.runtime.app import App
from oncall_server.runtime.settings import Settings
from oncall_server.severity import Severity
from oncall_server.testing import bootstrap

WINDOW_MINUTES = 5
alerts = st.lists(
    st.tuples(
        st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d"])),  # dedup key
        st.sampled_from([Severity.CRITICAL, Severity.HIGH]),
        st.sampled_from([0, 1, 3, 4, 6]),  # minutes since the previous alert
        st.booleans(),  # in the same request as the previous alert
    ),
    min_size=1,
    max_size=12,
)


def model(sequence: list[tuple[str | None, Severity, int, bool]], grouping: bool) -> list[int]:
    """The incident number of every alert."""
    open_keys: dict[str, int] = {}
    windows: dict[Severity, tuple[int, int]] = {}  # severity -> (incident, expires at minute)
    now, incidents, out = 0, 0, []
    for key, severity, step, _ in sequence:
        now += step
        if key is not None and key in open_keys:
            out.append(open_keys[key])
            continue
        window = windows.get(severity)
        if grouping and window and window[1] > now:
            incident = window[0]
        else:
            incidents += 1
            incident = incidents
        if grouping:
            windows[severity] = (incident, now + WINDOW_MINUTES)
        if key is not None:
            open_keys[key] = incident
        out.append(incident)
    return out


def same_partition(a: list[str], b: list[int]) -> bool:
    return len(a) == len(b) and all(
        (a[i] == a[j]) == (b[i] == b[j]) for i in range(len(a)) for j in range(len(a))
    )


def test_incidents_match_the_reference_model(
    tmp_path: Path, redis_url: str, backend_urls: dict[str, str]
) -> None:
    with asyncio.Runner() as runner:
        clock = FakeClock()
        settings_ = Settings(data_dir=tmp_path, database_url=backend_urls["sqlite"], redis_url=redis_url)
        app = runner.run(App.open(settings_, clock=clock))
        try:

            @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
            @given(sequence=alerts, grouping=st.booleans())
            def check(sequence: list[tuple[str | None, Severity, int, bool]], grouping: bool) -> None:
                runner.run(run(sequence, grouping))

            async def run(sequence: list[tuple[str | None, Severity, int, bool]], grouping: bool) -> None:
                tenant = await bootstrap(
                    app,
                    alert_grouping="time" if grouping else "none",
                    alert_grouping_timeout_minutes=WINDOW_MINUTES if grouping else 0,
                )
                context = await app.integrations.resolve_key(tenant.integration_key)
                got: list[str] = []
                request: list[NormalizedEvent] = []
                for index, (key, severity, step, together) in enumerate(sequence):
                    if step and request:
                        got += [r.incident_id for r in await app.pipeline.ingest_events(context, request)]
                        request = []
                    clock.advance(timedelta(minutes=step))
                    if not together and request:
                        got += [r.incident_id for r in await app.pipeline.ingest_events(context, request)]
                        request = []
                    request.append(NormalizedEvent(title=f"alert {index}", severity=severity, dedup_key=key))
                got += [r.incident_id for r in await app.pipeline.ingest_events(context, request)]
                expected = model(sequence, grouping)
                assert same_partition(got, expected), (sequence, got, expected)

            check()
        finally:
            runner.run(app.close())
