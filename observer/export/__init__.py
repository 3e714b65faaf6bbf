"""What leaves the agent: Prometheus metrics, the HTTP endpoints, the episode log lines."""
