# The observer image: the agent (`observer run`) and the tools that read kube-proxy's rules.
# Capabilities each dataplane mode needs, and why the DaemonSet runs as UID 0 for them:
# docs/deploy.md. The root filesystem can be read-only (the DaemonSet mounts /run and /tmp).

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY observer ./observer
RUN python -m venv /opt/observer \
    && /opt/observer/bin/pip install --no-compile ./

FROM python:3.11-slim-bookworm
# iptables: both backends (iptables-legacy-save, iptables-nft-save); nftables: nft;
# iproute2: `ip netns exec` for --netns. IPVS is read over netlink: no tool.
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables nftables iproute2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/observer /opt/observer
ENV PATH=/opt/observer/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Non-root unless the deployment says otherwise: with a dataplane to read, the DaemonSet runs
# it as UID 0 with only NET_ADMIN and NET_RAW (docs/deploy.md).
USER 65532:65532
EXPOSE 9809
ENTRYPOINT ["observer"]
CMD ["run"]
