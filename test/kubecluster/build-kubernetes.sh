#!/usr/bin/env bash
# Builds the Kubernetes binaries the cluster tests run (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kubectl) from the Go
# module proxy, and caches them: nothing is downloaded from anywhere else.
#
#   BERTH_K8S_CACHE  where the binaries go (default <repo>/.cache/kubernetes,
#                    git-ignored); the build lands in $BERTH_K8S_CACHE/v<version>/bin
#   K8S_VERSION      Kubernetes version (default 1.37.2)
#
# Prints the bin directory on its last line. Skips the build when every
# binary is there already.
#
# k8s.io/kubernetes cannot be built with `go install pkg@version`: its go.mod
# points its staging modules (k8s.io/api, k8s.io/client-go, ...) at
# ./staging, which the module zip does not resolve. So this generates a
# scratch module, outside berth's go.mod, that requires k8s.io/kubernetes and
# replaces every staging module with its published v0.<minor>.<patch>
# release; the list comes from k8s.io/kubernetes's own go.mod.
set -euo pipefail

version=${K8S_VERSION:-1.37.2}
repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${BERTH_K8S_CACHE:-$repo/.cache/kubernetes}
out=$cache/v$version/bin
commands=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)

have_all() {
	for c in "${commands[@]}"; do [ -x "$out/$c" ] || return 1; done
}
if have_all; then
	echo "Kubernetes v$version binaries are cached in $out" >&2
	echo "$out"
	exit 0
fi

# Published staging modules are v0.<minor>.<patch> for Kubernetes v1.<minor>.<patch>.
staging_version=v0.${version#1.}
# Not published on the module proxy, and not needed by the five commands.
unpublished='^k8s.io/(sample-cli-plugin|sample-controller)$'

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
start=$(date +%s)

go mod init berth.invalid/kubernetes-build >/dev/null 2>&1
go mod edit -go=1.26 -require=k8s.io/kubernetes@v"$version"
kube_mod=$(go mod download -json k8s.io/kubernetes@v"$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
[ -f "$kube_mod" ] || { echo "build-kubernetes: could not download k8s.io/kubernetes v$version's go.mod" >&2; exit 1; }
mapfile -t staging < <(sed -n 's#^[[:space:]]*\(k8s.io/[A-Za-z0-9._-]*\) => \./staging/.*#\1#p' "$kube_mod" | grep -Ev "$unpublished")
[ ${#staging[@]} -gt 0 ] || { echo "build-kubernetes: no staging modules found in $kube_mod" >&2; exit 1; }
for m in "${staging[@]}"; do
	go mod edit -replace="$m=$m@$staging_version"
done
echo "build-kubernetes: k8s.io/kubernetes v$version with ${#staging[@]} staging modules at $staging_version" >&2

pkgs=()
for c in "${commands[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
go get -tool "${pkgs[@]}"

# What `kubectl version` and the Node objects report (the version in
# k8s.io/kubernetes's own build is stamped the same way by its Makefile).
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $p.gitVersion=v$version -X $p.gitMajor=${version%%.*}"
	minor=${version#*.}; minor=${minor%%.*}
	ldflags+=" -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
mkdir -p bin
go build -trimpath -ldflags "$ldflags" -o bin/ "${pkgs[@]}"

mkdir -p "$(dirname "$out")"
rm -rf "$out"
mv bin "$out"
echo "build-kubernetes: built ${commands[*]} in $(( $(date +%s) - start ))s into $out" >&2
echo "$out"
