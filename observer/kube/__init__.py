"""Kubernetes API access: the watch loop and typed views of the objects the agent reads."""
