"""Readers of this node's kube-proxy dataplane: which endpoints it still selects."""
