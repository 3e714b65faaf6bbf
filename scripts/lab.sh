#!/usr/bin/env bash
# Set up, then run the lab: a local 3-node cluster (emulated control plane, kubelets and
# kube-proxies, real rules in network namespaces when run as root, one real agent per node),
# 60 pod deletions, and the measurements compared with the truth. Extra flags go to
# `observer lab` (see `.venv/bin/observer lab --help`), e.g. --serve to keep it running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
exec .venv/bin/observer lab "$@"
