"""The ``log`` channel: one log line per page.

For operators trying a setup without a mail relay or receiver, and for tests.
The address is a free-text label saying whose log line it is.
"""

from __future__ import annotations

import logging

from oncall_server.hookspecs import AT_LEAST_ONCE, Destination, Page

log = logging.getLogger("oncall.notifications")


class LogChannel:
    name = "log"
    # A repeated line (same notification=) after a replica died mid-send harms nobody.
    delivery = AT_LEAST_ONCE

    def validate_address(self, address: str) -> str:
        label = address.strip()
        if not label:
            raise ValueError("a log contact method needs a label (any text)")
        if len(label) > 200:
            raise ValueError("a log label is at most 200 characters")
        if not label.isprintable():
            # One page is one line: no newlines or control characters to forge other lines.
            raise ValueError("a log label must be printable text on one line")
        return label

    async def send(self, page: Page, destination: Destination) -> None:
        # %r keeps sender-controlled text (title, label) on one line.
        log.info(
            "page notification=%s kind=%s tenant=%s incident=%s severity=%s status=%s tier=%d to=%r "
            "user=%s title=%r url=%s",
            page.notification_id,
            page.kind,
            page.tenant_id,
            page.incident_id,
            page.severity,
            page.status,
            page.tier,
            destination.address,
            page.user_id,
            page.title,
            page.incident_url,
        )

    async def close(self) -> None:
        return None
