#!/usr/bin/env bash
# Installs what Sigil's build, tests and lab need on a fresh Debian machine,
# and does nothing that is already done. Prints each step it takes.
#   hack/setup.sh            # packages, bpffs, Kubernetes binaries
#   SIGIL_SKIP_K8S=1 hack/setup.sh   # without the (cached) Kubernetes build
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*"; }

# containerd and runc: the container runtime of `sigil lab`'s nodes (apt does
# not start them; the lab runs one containerd per node with its own config).
packages=(clang-16 llvm-16 libbpf-dev linux-libc-dev iproute2 iperf3 iputils-ping iptables nftables ethtool util-linux containerd runc)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
	log "packages present: ${packages[*]}"
fi

if mountpoint -q /sys/fs/bpf && [ "$(stat -f -c %T /sys/fs/bpf)" = bpf_fs ]; then
	log "bpffs mounted at /sys/fs/bpf"
else
	log "mounting bpffs at /sys/fs/bpf"
	mount -t bpf bpf /sys/fs/bpf
fi

if [ -z "${SIGIL_SKIP_K8S:-}" ] && [ -x hack/k8s-binaries.sh ]; then
	hack/k8s-binaries.sh
fi
log "done"
