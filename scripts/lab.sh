#!/usr/bin/env bash
# Set up, then run the lab: today the lab's Kubernetes API server. It prints the kubeconfig
# path; in another shell: KUBECONFIG=<that path> .tools/bin/kubectl get pods -w
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
kubeconfig="${OBSERVER_LAB_KUBECONFIG:-$PWD/.lab/kubeconfig}"
echo "lab: serving the API on 127.0.0.1; kubeconfig at $kubeconfig; Ctrl-C to stop"
exec .venv/bin/observer lab apiserver --listen 127.0.0.1:0 --kubeconfig-out "$kubeconfig" "$@"
