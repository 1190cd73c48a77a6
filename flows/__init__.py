"""Prefect flows: the DVC pipeline, batch scoring, and their scheduled deployments."""
