"""Metrics, logs and the health endpoint."""
