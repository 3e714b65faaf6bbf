#!/usr/bin/env bash
# Build the container image where there is no Docker engine, for amd64 and arm64, and run it
# as a cluster would. As root, on Debian; for each architecture (IMAGE_ARCHES, default this
# machine's and the other of amd64/arm64):
#   1. the base, Debian bookworm, made locally by debootstrap (minimal variant, without the
#      documentation, man pages and translations the official slim images leave out), stored as
#      localhost/debian:bookworm-slim-<arch>; a foreign architecture's runs under emulation
#      (qemu-user-static, registered with binfmt_misc with the F flag: the interpreter is opened
#      once, so it works in the chroots; unregistered at exit when this script registered it);
#   2. the project's own Dockerfile built by buildah (vfs storage, chroot isolation: no daemon)
#      on that base: localhost/observer:<version>-<arch>;
#   3. its SBOM (CycloneDX, scripts/sbom.py, from the image's own dpkg status and Python
#      environment) beside it: .image/observer-<version>-<arch>.cdx.json, schema-validated;
#   4. this machine's image's entrypoint run three ways: `observer --version` (as the image's
#      own non-root user); `observer dataplane --json` inside a network namespace holding
#      kube-proxy's rules, as UID 0 with NET_ADMIN and NET_RAW (as the DaemonSet runs it); and
#      `observer run` against the lab API server for a few seconds, its /metrics scraped. The
#      other architecture's runs `observer --version` and `observer dataplane --help` under
#      emulation;
#   5. the manifest list localhost/observer:<version> naming both images.
# Storage lives in .image/ (images kept for `buildah manifest push --all`); a second run reuses
# the bases. Sizes are printed (docs/deploy.md records them).
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" -eq 0 ] || { echo "image: run as root (debootstrap and buildah need it)" >&2; exit 1; }
bash scripts/setup.sh >&2  # the venv: the lab API server and the rule fixtures come from it

NATIVE=$(dpkg --print-architecture)
read -r -a ARCHES <<<"${IMAGE_ARCHES:-$NATIVE $([ "$NATIVE" = amd64 ] && echo arm64 || echo amd64)}"
qemu_arch() { case "$1" in amd64) echo x86_64 ;; arm64) echo aarch64 ;; *) echo "$1" ;; esac; }

need=()
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v buildah >/dev/null 2>&1 || need+=(buildah)
for arch in "${ARCHES[@]}"; do
  if [ "$arch" != "$NATIVE" ] && [ ! -e "/usr/lib/binfmt.d/qemu-$(qemu_arch "$arch").conf" ]; then
    need+=(qemu-user-static)
    break
  fi
done
if [ ${#need[@]} -gt 0 ]; then
  echo "image: installing Debian packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
    >/dev/null
fi

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
VERSION=$(.venv/bin/observer --version | awk '{print $2}')
LIST=localhost/observer:$VERSION  # the manifest list; each architecture's image: $LIST-<arch>
STATE=$PWD/.image
export BUILDAH_ISOLATION=chroot  # `bud` and `run` alike: no OCI runtime, no daemon
BUILDAH=("$(command -v buildah)" --root "$STATE/storage" --runroot "$STATE/run" --storage-driver vfs)
buildah() { "${BUILDAH[@]}" "$@"; }

containers=() pids=() netns="" registered=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for ctr in "${containers[@]}"; do buildah rm "$ctr" >/dev/null 2>&1 || true; done
  [ -n "$netns" ] && ip netns del "$netns" 2>/dev/null || true
  for entry in "${registered[@]}"; do echo -1 >"/proc/sys/fs/binfmt_misc/$entry" || true; done
  rm -rf "$STATE/rootfs" "$STATE/kube"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
mkdir -p "$STATE"

# Emulation for a foreign architecture: qemu-user-static's interpreter, registered with the
# kernel's binfmt_misc (flag F: opened now, so chroots without it run its binaries too).
emulate() {
  local arch=$1 entry
  entry=qemu-$(qemu_arch "$arch")
  [ -e /proc/sys/fs/binfmt_misc/register ] \
    || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  if [ ! -e "/proc/sys/fs/binfmt_misc/$entry" ]; then
    cat "/usr/lib/binfmt.d/$entry.conf" >/proc/sys/fs/binfmt_misc/register
    registered+=("$entry")
  fi
}

# 1. The base ----------------------------------------------------------------------------------
base() {
  local arch=$1 name=localhost/debian:$SUITE-slim-$1 ctr
  buildah inspect --type image "$name" >/dev/null 2>&1 && return
  echo "image: making $name with debootstrap ($MIRROR)"
  rm -rf "$STATE/rootfs"
  debootstrap --arch="$arch" --variant=minbase "$SUITE" "$STATE/rootfs" "$MIRROR" \
    >"$STATE/debootstrap-$arch.log" 2>&1 || { tail -20 "$STATE/debootstrap-$arch.log" >&2; exit 1; }
  # What the slim images leave out, now and for every package installed later (dpkg's
  # path-exclude; copyright files stay, as Debian's licences ask).
  cat >"$STATE/rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EOF
  # apt keeps no package caches or downloaded packages in an image (as the official ones do).
  cat >"$STATE/rootfs/etc/apt/apt.conf.d/slim" <<'EOF'
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
Acquire::GzipIndexes "true";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
EOF
  find "$STATE/rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$STATE/rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$STATE"/rootfs/usr/share/{man,info,groff,linda,lintian,locale}/* \
    "$STATE"/rootfs/var/cache/apt/archives/*.deb "$STATE"/rootfs/var/cache/apt/*.bin \
    "$STATE"/rootfs/var/lib/apt/lists/* \
    "$STATE"/rootfs/var/log/*.log "$STATE"/rootfs/var/log/apt/*
  ctr=$(buildah from scratch)
  containers+=("$ctr")
  tar -C "$STATE/rootfs" -c . | tar -C "$(buildah mount "$ctr")" -x
  buildah umount "$ctr" >/dev/null
  # The image's own architecture (a scratch container has this machine's).
  buildah config --arch "$arch" --os linux --cmd bash \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --created-by "scripts/image.sh: debootstrap --arch=$arch --variant=minbase $SUITE, slimmed" \
    "$ctr"
  buildah commit -q "$ctr" "$name" >/dev/null
  rm -rf "$STATE/rootfs"
}

# 2. The project's Dockerfile ------------------------------------------------------------------
build() {
  local arch=$1 ca
  local args=(bud --pull=false --layers=false --arch "$arch" --os linux
              --build-arg "BASE=localhost/debian:$SUITE-slim-$arch" -t "$LIST-$arch")
  # Behind a TLS-intercepting proxy the host's pip trusts its CA: so must the build's.
  ca=${PIP_CERT:-$(.venv/bin/python -m pip config get global.cert 2>/dev/null || true)}
  if [ -n "$ca" ] && [ -f "$ca" ]; then
    args+=(--volume "$ca:/run/host-ca.pem:ro" --build-arg PIP_CERT=/run/host-ca.pem)
  fi
  echo "image: building $LIST-$arch from Dockerfile$([ "$arch" = "$NATIVE" ] || echo ", emulated")"
  buildah "${args[@]}" . >"$STATE/build-$arch.log" 2>&1 \
    || { tail -30 "$STATE/build-$arch.log" >&2; exit 1; }
}

# 3. Its SBOM, beside it -----------------------------------------------------------------------
bill() {
  local arch=$1 ctr out=$STATE/observer-$VERSION-$1.cdx.json
  ctr=$(buildah from --pull=false --arch "$arch" "$LIST-$arch")
  containers+=("$ctr")
  .venv/bin/python scripts/sbom.py --root "$(buildah mount "$ctr")" --name observer \
    --version "$VERSION" --arch "$arch" >"$out"
  buildah umount "$ctr" >/dev/null
  .venv/bin/python - "$out" <<'EOF'
import json, sys
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
text = open(sys.argv[1]).read()
error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
assert error is None, error
names = {c["name"] for c in json.loads(text)["components"]}
assert {"python3", "iptables", "nftables", "aiohttp", "observer"} <= names, sorted(names)
print(f"image:   SBOM {sys.argv[1]}: {len(names)} components, valid CycloneDX 1.6")
EOF
}

for arch in "${ARCHES[@]}"; do
  [ "$arch" = "$NATIVE" ] || emulate "$arch"
  base "$arch"
  build "$arch"
  bill "$arch"
done
buildah rmi --prune >/dev/null 2>&1 || true  # what an earlier build of the same tags left

# 4. Run them ----------------------------------------------------------------------------------
for arch in "${ARCHES[@]}"; do
  [ "$arch" != "$NATIVE" ] || continue
  echo "image: $LIST-$arch, emulated: observer --version, observer dataplane --help"
  ctr=$(buildah from --pull=false --arch "$arch" "$LIST-$arch")
  containers+=("$ctr")
  machine=$(buildah run "$ctr" -- python3 -c 'import platform; print(platform.machine())')
  [ "$machine" = "$(qemu_arch "$arch")" ] \
    || { echo "image: the $arch image ran as $machine" >&2; exit 1; }
  version=$(buildah run "$ctr" -- observer --version)
  [ "$version" = "observer $VERSION" ] || { echo "image: $arch: --version said: $version" >&2; exit 1; }
  buildah run "$ctr" -- observer dataplane --help >"$STATE/dataplane-help-$arch.txt"
  grep -q -- "--mode" "$STATE/dataplane-help-$arch.txt" \
    || { echo "image: $arch: observer dataplane --help has no --mode" >&2; exit 1; }
  echo "image:   on $machine: $version; observer dataplane --help: $(wc -l <"$STATE/dataplane-help-$arch.txt") lines"
done

IMAGE=$LIST-$NATIVE
ctr=$(buildah from --pull=false "$IMAGE")
containers+=("$ctr")

echo "image: observer --version, as the image's own user"
version=$(buildah run "$ctr" -- observer --version)
[ "$version" = "observer $VERSION" ] || { echo "image: --version said: $version" >&2; exit 1; }
uid=$(buildah run "$ctr" -- python3 -c 'import os; print(os.getuid())')
[ "$uid" = 65532 ] || { echo "image: runs as UID $uid by default, not 65532" >&2; exit 1; }
echo "image: nothing of the lab inside; observer lab says so"
if buildah run "$ctr" -- python3 -c 'import observer.lab' 2>/dev/null; then
  echo "image: the lab is in the image" >&2; exit 1
fi
status=0
said=$(buildah run "$ctr" -- observer lab --deletions 1 2>&1) || status=$?
if [ "$status" -eq 0 ] || ! grep -q "the lab is not part of this installation" <<<"$said"; then
  echo "image: observer lab in the image: exit $status: $said" >&2; exit 1
fi

# buildah's `--cap-drop all` would also drop what --cap-add adds: drop its defaults one by one.
as_daemonset=(--network host --user 0:0 --cap-add CAP_NET_ADMIN --cap-add CAP_NET_RAW)
for cap in CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE \
           SYS_CHROOT SETFCAP; do
  as_daemonset+=(--cap-drop "CAP_$cap")
done
caps=$(buildah run "${as_daemonset[@]}" "$ctr" -- python3 -c \
  'print([l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0])')
# NET_ADMIN is bit 12, NET_RAW bit 13 (linux/capability.h).
[ "$caps" = 0000000000003000 ] || { echo "image: capabilities $caps, not NET_ADMIN+NET_RAW" >&2; exit 1; }
netns=obs-image-$$
ip netns add "$netns"
for mode in nftables iptables-legacy; do
  echo "image: observer dataplane --json in a network namespace with kube-proxy's $mode rules"
  ip netns exec "$netns" nft flush ruleset
  ip netns exec "$netns" iptables-legacy -t nat -F
  if [ "$mode" = nftables ]; then
    ip netns exec "$netns" nft -f tests/fixtures/dataplane/nftables.nft
  else
    ip netns exec "$netns" iptables-legacy-restore <tests/fixtures/dataplane/iptables-nat.rules
  fi
  # As the DaemonSet runs it: UID 0, with NET_ADMIN and NET_RAW only (docs/deploy.md).
  ip netns exec "$netns" "${BUILDAH[@]}" run "${as_daemonset[@]}" "$ctr" -- \
    observer dataplane --json >"$STATE/dataplane.json"
  .venv/bin/python - "$STATE/dataplane.json" "${mode%%-*}" <<'EOF'
import json, sys
document = json.load(open(sys.argv[1]))
services = sorted(s["service"] for s in document["services"])
assert document["mode"] == sys.argv[2], document["mode"]
assert services == [f"ns{n}/svc{n}:p80" for n in range(1, 6)], services
print(f"image:   mode {document['mode']}, backend {document['backend']}: {len(services)} services")
EOF
done

echo "image: observer run against the lab API server, /metrics scraped"
mkdir -p "$STATE/kube"
.venv/bin/observer lab apiserver --kubeconfig-out "$STATE/kube/kubeconfig" >"$STATE/apiserver.log" 2>&1 &
pids+=($!)
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
for _ in $(seq 300); do [ -s "$STATE/kube/kubeconfig" ] && break; sleep 0.1; done
chmod 0644 "$STATE/kube/kubeconfig"  # read by the image's own user
buildah run --network host --volume "$STATE/kube:/kube:ro" "$ctr" -- observer run \
  --kubeconfig /kube/kubeconfig \
  --node-name image-test --dataplane none --listen "127.0.0.1:$port" >"$STATE/agent.log" 2>&1 &
agent=$!
pids+=("$agent")
.venv/bin/python - "$port" <<'EOF'
import sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
deadline = time.monotonic() + 120
while True:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as ready:
            if ready.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("image: the agent in the image never became ready (see .image/agent.log)")
    time.sleep(0.2)
with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
    text = response.read().decode()
assert 'endpoint_propagation_build_info{proxy_mode="none"' in text, text[:2000]
assert "endpoint_propagation_episodes_total" in text
print(f"image:   ready; /metrics: {len(text.splitlines())} lines")
EOF
# SIGTERM to the agent itself, as the kubelet sends it (buildah run does not pass signals on).
pkill -TERM -f "^/opt/observer/bin/python3? /opt/observer/bin/observer run --kubeconfig /kube/"
status=0
wait "$agent" || status=$?
if [ "$status" -ne 0 ] || ! grep -q '"agent stopped"' "$STATE/agent.log"; then
  tail -20 "$STATE/agent.log" >&2
  echo "image: the agent did not stop cleanly on SIGTERM (exit $status)" >&2
  exit 1
fi

# 5. Both, as one name -------------------------------------------------------------------------
buildah manifest rm "$LIST" >/dev/null 2>&1 || true
buildah manifest create "$LIST" >/dev/null
for arch in "${ARCHES[@]}"; do
  buildah manifest add "$LIST" "containers-storage:$LIST-$arch" >/dev/null
  echo "image: $LIST-$arch passed, $(buildah images --format '{{.Size}}' "$LIST-$arch")"
done
echo "image: $LIST: the manifest list of ${ARCHES[*]}"
