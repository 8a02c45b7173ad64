"""Deployment checks with the real tools: helm, promtool, hadolint, kubernetes-validate."""
