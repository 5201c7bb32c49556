#!/usr/bin/env bash
# Builds pinned Kubernetes control-plane binaries, etcd and helm from the Go module
# proxy into a cache folder, and skips whatever is already there at the pinned version.
#
#   hack/k8s-binaries.sh                      # build everything (apiserver + etcd first)
#   hack/k8s-binaries.sh --only apiserver,etcd
#   hack/k8s-binaries.sh --print-dir          # print the bin folder and exit
#   KUBEBUILDER_ASSETS=$(hack/k8s-binaries.sh --print-dir)
#
# Versions: hack/k8s-versions.env. Cache: ${SIGIL_CACHE_DIR:-/var/cache/sigil}/k8s.
# See hack/README.md.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=k8s-versions.env
source "$script_dir/k8s-versions.env"
: "${K8S_VERSION:?missing in k8s-versions.env}" "${ETCD_VERSION:?}" "${HELM_VERSION:?}"

# Default build order: what envtest needs comes first.
ALL_BINARIES=(kube-apiserver etcd kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcdctl helm)
# Bump when the way the wrapper modules are generated changes: they are then made anew.
WRAPPER_FORMAT=1

usage() {
	cat <<EOF
usage: $0 [--only NAME[,NAME...]] [--print-dir]
  --only       build only these (default: all). Names: ${ALL_BINARIES[*]}
               (the kube- prefix may be left out, e.g. --only apiserver,etcd)
  --print-dir  print the bin folder (usable as KUBEBUILDER_ASSETS) and exit
Versions come from hack/k8s-versions.env; cache root is \${SIGIL_CACHE_DIR:-/var/cache/sigil}.
EOF
}

normalize() {
	case "$1" in
	apiserver | kube-apiserver) echo kube-apiserver ;;
	controller-manager | kube-controller-manager) echo kube-controller-manager ;;
	scheduler | kube-scheduler) echo kube-scheduler ;;
	kubelet | kube-kubelet) echo kubelet ;;
	proxy | kube-proxy) echo kube-proxy ;;
	kubectl | etcd | etcdctl | helm) echo "$1" ;;
	*) return 1 ;;
	esac
}

only=""
print_dir=false
while (($#)); do
	case "$1" in
	--only) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; only+="${only:+,}$2"; shift 2 ;;
	--only=*) only+="${only:+,}${1#--only=}"; shift ;;
	--print-dir) print_dir=true; shift ;;
	-h | --help) usage; exit 0 ;;
	*) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
	esac
done

cache_dir=${SIGIL_CACHE_DIR:-/var/cache/sigil}
[[ $cache_dir == /* ]] || cache_dir="$PWD/$cache_dir"
k8s_root="$cache_dir/k8s"
bin_dir="$k8s_root/v$K8S_VERSION/bin"
src_dir="$k8s_root/src"

if $print_dir; then
	echo "$bin_dir"
	exit 0
fi

selected=()
if [[ -z $only || $only == all ]]; then
	selected=("${ALL_BINARIES[@]}")
else
	declare -A want=()
	IFS=, read -ra names <<<"$only"
	for n in "${names[@]}"; do
		[[ -n $n ]] || continue
		if ! b=$(normalize "$n"); then
			echo "unknown binary: $n (known: ${ALL_BINARIES[*]})" >&2
			exit 2
		fi
		want[$b]=1
	done
	for b in "${ALL_BINARIES[@]}"; do
		[[ -n ${want[$b]:-} ]] && selected+=("$b")
	done
fi

k8s_major=${K8S_VERSION%%.*}
k8s_minor=${K8S_VERSION#*.}
k8s_minor=${k8s_minor%%.*}
k8s_staging_version="v0.${K8S_VERSION#*.}" # 1.37.2 -> v0.37.2

# Go settings for every build: no workspace, static binaries, reproducible paths.
# GOMAXPROCS (and so `go build -p`) is left as the caller set it.
export GOWORK=off CGO_ENABLED=0
base_goflags="${GOFLAGS:-}"
wrapper_goflags="${base_goflags:+$base_goflags }-mod=mod -buildvcs=false"

mkdir -p "$bin_dir" "$src_dir"

# One run at a time per cache: a second run waits, then finds everything cached.
exec 9>"$k8s_root/.lock"
if ! flock -n 9; then
	echo "waiting for the lock on $k8s_root/.lock (another run is building)..." >&2
	flock 9
fi

# With the lock held, any leftover temp file or folder is from a killed run.
rm -rf "$k8s_root"/.tmp.* "$bin_dir"/.*.tmp.*
tmp_dir=$(mktemp -d "$k8s_root/.tmp.XXXXXX")
current="" # the binary being built, for the failure message
on_exit() {
	local rc=$?
	rm -rf "$tmp_dir" "$bin_dir"/.*.tmp."$$"
	if ((rc != 0)) && [[ -n $current ]]; then
		echo "$current: BUILD FAILED or interrupted (exit $rc)" >&2
	fi
	exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { echo "$*" >&2; }

# Prints the expected version line and the command that reports it.
expected_version() {
	case "$1" in
	kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kube-proxy)
		echo "Kubernetes v$K8S_VERSION" ;;
	kubectl) echo "Client Version: v$K8S_VERSION" ;;
	etcd) echo "etcd Version: $ETCD_VERSION" ;;
	etcdctl) echo "etcdctl version: $ETCD_VERSION" ;;
	helm) echo "v$HELM_VERSION" ;;
	esac
}

version_output() { # name path
	local args
	case "$1" in
	kubectl) args=(version --client) ;;
	etcdctl) args=(version) ;;
	helm) args=(version --template '{{.Version}}') ;;
	*) args=(--version) ;;
	esac
	timeout 60 "$2" "${args[@]}" 2>&1 </dev/null || true
}

has_pinned_version() { # name path
	[[ -x $2 ]] || return 1
	version_output "$1" "$2" | grep -qxF "$(expected_version "$1")"
}

pinned_label() {
	case "$1" in
	etcd | etcdctl) echo "v$ETCD_VERSION" ;;
	helm) echo "v$HELM_VERSION" ;;
	*) echo "v$K8S_VERSION" ;;
	esac
}

gomod_file_of() { # module@version -> path of its go.mod in the module cache
	GOFLAGS="$base_goflags" go mod download -json "$1" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p'
}

# Lists "module version" for each requirement of a go.mod file.
requirements_of() {
	awk '
		/^require[[:space:]]*\($/ { inreq = 1; next }
		inreq && /^\)/ { inreq = 0; next }
		inreq && NF >= 2 && $1 !~ /^\/\// { print $1, $2; next }
		/^require[[:space:]]+[^(]/ { print $2, $3 }
	' "$1"
}

# Wrapper module for k8s.io/kubernetes: requires it, replaces each staging module that
# kubernetes requires at v0.0.0 with its published v0.<minor>.<patch>.
k8s_module="$src_dir/kubernetes-v$K8S_VERSION"
setup_k8s_module() {
	if [[ -f $k8s_module/.ready && $(<"$k8s_module/.ready") == "$WRAPPER_FORMAT" ]]; then
		return
	fi
	log "preparing wrapper module $k8s_module"
	rm -rf "$k8s_module"
	mkdir -p "$k8s_module"
	local gomod
	gomod=$(gomod_file_of "k8s.io/kubernetes@v$K8S_VERSION")
	[[ -f $gomod ]] || { log "could not download k8s.io/kubernetes@v$K8S_VERSION"; return 1; }
	local staging=()
	mapfile -t staging < <(requirements_of "$gomod" |
		awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1 }' |
		grep -vxE 'k8s\.io/(sample-cli-plugin|sample-controller)')
	((${#staging[@]} > 0)) || { log "no k8s.io staging modules found in $gomod"; return 1; }
	log "  ${#staging[@]} staging modules replaced with $k8s_staging_version"
	(
		cd "$k8s_module"
		export GOFLAGS="$wrapper_goflags"
		go mod init sigil.local/k8s-binaries >/dev/null 2>&1
		local edits=("-require=k8s.io/kubernetes@v$K8S_VERSION") m
		for m in "${staging[@]}"; do
			edits+=("-replace=$m=$m@$k8s_staging_version")
		done
		go mod edit "${edits[@]}"
		cat >tools.go <<'EOF'
//go:build tools

// Package tools pins the Kubernetes commands built by hack/k8s-binaries.sh.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
EOF
		go mod tidy
	)
	echo "$WRAPPER_FORMAT" >"$k8s_module/.ready"
}

# Wrapper module for etcd: server and etcdctl are both required before tidy, so tidy
# does not pick an etcdctl that fails to build against the pinned server.
etcd_module="$src_dir/etcd-v$ETCD_VERSION"
setup_etcd_module() {
	if [[ -f $etcd_module/.ready && $(<"$etcd_module/.ready") == "$WRAPPER_FORMAT" ]]; then
		return
	fi
	log "preparing wrapper module $etcd_module"
	rm -rf "$etcd_module"
	mkdir -p "$etcd_module"
	(
		cd "$etcd_module"
		export GOFLAGS="$wrapper_goflags"
		go mod init sigil.local/etcd-binaries >/dev/null 2>&1
		go mod edit -require="go.etcd.io/etcd/server/v3@v$ETCD_VERSION" \
			-require="go.etcd.io/etcd/etcdctl/v3@v$ETCD_VERSION"
		cat >tools.go <<'EOF'
//go:build tools

// Package tools pins the etcd commands built by hack/k8s-binaries.sh.
package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
EOF
		go mod tidy
	)
	echo "$WRAPPER_FORMAT" >"$etcd_module/.ready"
}

# Builds one binary into $1 (a temp path).
build_one() { # name out
	local name=$1 out=$2
	case "$name" in
	kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kube-proxy | kubectl)
		setup_k8s_module
		local v="v$K8S_VERSION" ldflags="-s -w" pkg
		for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
			ldflags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$k8s_major -X $pkg.gitMinor=$k8s_minor"
		done
		(cd "$k8s_module" && GOFLAGS="$wrapper_goflags" go build -trimpath -ldflags "$ldflags" \
			-o "$out" "k8s.io/kubernetes/cmd/$name")
		;;
	etcd | etcdctl)
		setup_etcd_module
		local pkg=go.etcd.io/etcd/server/v3
		[[ $name == etcdctl ]] && pkg=go.etcd.io/etcd/etcdctl/v3
		(cd "$etcd_module" && GOFLAGS="$wrapper_goflags" go build -trimpath -ldflags "-s -w" -o "$out" "$pkg")
		;;
	helm)
		# helm's Makefile stamps its version and the Kubernetes version it was built
		# against (client-go v0.M.m -> 1.M... as major+1 / minor); do the same.
		local helm_gomod client_go hmaj hmin
		helm_gomod=$(gomod_file_of "helm.sh/helm/v3@v$HELM_VERSION")
		client_go=$(requirements_of "$helm_gomod" | awk '$1 == "k8s.io/client-go" { print $2 }')
		client_go=${client_go#v}
		hmaj=$((${client_go%%.*} + 1))
		hmin=${client_go#*.}
		hmin=${hmin%%.*}
		local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"
		ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$hmaj -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$hmin"
		ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$hmaj -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$hmin"
		local gobin="$tmp_dir/helm-gobin"
		mkdir -p "$gobin"
		(cd "$tmp_dir" && GOBIN="$gobin" GOFLAGS="${base_goflags:+$base_goflags }-buildvcs=false" \
			go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION")
		mv -f "$gobin/helm" "$out"
		;;
	esac
}

# Any failing step stops the run (set -e); the EXIT trap names the binary and cleans up.
for name in "${selected[@]}"; do
	target="$bin_dir/$name"
	label="$name $(pinned_label "$name")"
	if has_pinned_version "$name" "$target"; then
		echo "$label: cached"
		continue
	fi
	log "$label: building..."
	current=$label
	start=$SECONDS
	tmp_out="$bin_dir/.$name.tmp.$$"
	rm -f "$tmp_out"
	build_one "$name" "$tmp_out"
	if ! has_pinned_version "$name" "$tmp_out"; then
		echo "$label: the built binary reports another version:" >&2
		version_output "$name" "$tmp_out" | head -5 >&2
		exit 1
	fi
	mv -f "$tmp_out" "$target"
	current=""
	echo "$label: built in $((SECONDS - start))s"
done
