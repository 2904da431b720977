"""The paging engine: escalation scheduler, due set, escalation state, the notification outbox."""
