# The observer image: the agent (`observer run`) and the tools that read kube-proxy's rules.
# Everything in it comes from Debian's packages (the base, Python, the dataplane tools) and from
# the project's wheel with its dependencies. Capabilities each dataplane mode needs, and why the
# DaemonSet runs as UID 0 for them: docs/deploy.md. The root filesystem can be read-only (the
# DaemonSet mounts /run and /tmp).
#
# Build: `docker build -t observer .` (`docker buildx build --platform linux/amd64,linux/arm64`
# for both architectures), or where there is no Docker engine, scripts/image.sh (the base made
# with debootstrap for each architecture, the same Dockerfile built by buildah, then run).

# The base of both stages: scripts/image.sh names its own per architecture.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
# Python from Debian (the runtime stage has the same interpreter at the same path, so the
# virtual environment made here runs there unchanged).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Behind a TLS-intercepting proxy, its CA bundle (mounted into the build) for pip:
# `--build-arg PIP_CERT=/path/in/the/build` (scripts/image.sh does it when the host's pip has one).
ARG PIP_CERT=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY observer ./observer
# pip and setuptools only install, and the lab (`observer lab`: an API server, emulated
# kubelets and kube-proxies) is for a workstation: the image carries what the agent runs.
RUN python3 -m venv /opt/observer \
    && /opt/observer/bin/pip install --no-compile ${PIP_CERT:+--cert "$PIP_CERT"} ./ \
    && /opt/observer/bin/pip uninstall -y -q pip setuptools \
    && rm -r /opt/observer/lib/python3*/site-packages/observer/lab \
        /opt/observer/lib/python3*/site-packages/observer/testing

FROM ${BASE}
# python3: the interpreter the environment was made with; iptables: both backends
# (iptables-legacy-save, iptables-nft-save); nftables: nft; iproute2: `ip netns exec` for
# --netns. IPVS is read over netlink: no tool.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 iptables nftables iproute2 \
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
