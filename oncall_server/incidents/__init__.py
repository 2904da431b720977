"""Incidents: acting on them, their change feed, and the states every part shares."""
