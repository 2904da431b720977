"""What a tenant configures: tenants and tokens, services, users, escalation policies, schedules."""
