"""observer: measure how long Kubernetes endpoint removal takes to reach each node's dataplane."""

__version__ = "0.1.0"
