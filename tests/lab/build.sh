#!/usr/bin/env bash
# Builds the upstream Go programs of the lab once, into a cache outside the
# work tree keyed by version: $LAB_CACHE/<part>-<version>/bin/<program>.
# Each program gets its own small wrapper module, because their replace
# directives differ and `go install pkg@version` refuses modules with replaces.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
LAB_CACHE=${LAB_CACHE:-$HOME/.cache/rbd-mirror-step-lab}
export GOFLAGS=-mod=mod
mkdir -p "$LAB_CACHE"

log() { printf '[lab build %s] %s\n' "$(date +%T)" "$*" >&2; }

# build_wrapper <dir> <require-line...> -- <go build args...>
prepare() { rm -rf "$1"; mkdir -p "$1/src" "$1/bin"; }

build_etcd() {
  local d="$LAB_CACHE/etcd-$ETCD_VERSION"
  [[ -x $d/bin/etcd ]] && return 0
  log "building etcd $ETCD_VERSION (cold: a few minutes)"
  prepare "$d"
  ( cd "$d/src"
    go mod init lab/etcd >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
    go build -trimpath -ldflags='-s -w' -o "$d/bin/etcd.tmp" go.etcd.io/etcd/server/v3
    mv "$d/bin/etcd.tmp" "$d/bin/etcd" )
}

# kube_wrapper <dir> <version> <go import of the command's app package> <constructor>:
# a module that builds one Kubernetes command from the published
# k8s.io/kubernetes module at <version>, into <dir>/bin/<name of dir's part>.
kube_wrapper() {
  local src=$1 v=$2 app=$3 ctor=$4
  ( cd "$src"
    # The published k8s.io/kubernetes go.mod requires its staging modules at
    # v0.0.0 and maps them into ./staging with replace directives, which are
    # ignored in a dependency: map every one of them to its published tag.
    local staging="v0.${v#v1.}"
    go mod download -json "k8s.io/kubernetes@$v" > dl.json
    cp "$(jq -r .GoMod dl.json)" upstream.mod
    {
      echo "module lab/kube"
      echo "go 1.24.0"
      echo "require k8s.io/kubernetes $v"
      echo "replace ("
      sed -n '/^replace (/,/^)/p' upstream.mod | grep -oE 'k8s.io/[a-z0-9-]+ =>' | sed 's/ =>//' |
        while read -r m; do echo "	$m => $m $staging"; done
      echo ")"
    } > go.mod
    if [[ $ctor == main:* ]]; then
      # A command whose upstream main is more than cli.Run(ctor()): the file itself.
      cp "$(jq -r .Dir dl.json)/${ctor#main:}" main.go
      chmod u+w main.go
    else
      cat > main.go <<GO
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"$app"
)

func main() { os.Exit(cli.Run(app.$ctor())) }
GO
    fi
    go mod tidy >/dev/null 2>&1 || go mod tidy )
}

# kube_build <dir> <version> <binary>: the wrapper in <dir>/src, built with the
# version stamped in (/version must report it: knative checks a minimum).
kube_build() {
  local d=$1 v=$2 bin=$3
  local minor=${v#v1.}; minor=${minor%%.*}
  local pkg=k8s.io/component-base/version
  ( cd "$d/src"
    go build -trimpath -ldflags="-s -w -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean" \
      -o "$d/bin/$bin.tmp" .
    mv "$d/bin/$bin.tmp" "$d/bin/$bin" )
}

build_kube() {
  local d="$LAB_CACHE/kubernetes-$KUBERNETES_VERSION" v=$KUBERNETES_VERSION
  [[ -x $d/bin/kube-apiserver ]] && return 0
  log "building kube-apiserver $v (cold: 10-20 minutes on 2 cores)"
  prepare "$d"
  kube_wrapper "$d/src" "$v" k8s.io/kubernetes/cmd/kube-apiserver/app NewAPIServerCommand
  kube_build "$d" "$v" kube-apiserver
}

# kube-controller-manager, from the same pinned module as kube-apiserver, in
# its own cache folder so that building it never disturbs a built apiserver.
# Go's build cache already holds most of Kubernetes after kube-apiserver.
build_kcm() {
  local d="$LAB_CACHE/kube-controller-manager-$KUBERNETES_VERSION" v=$KUBERNETES_VERSION
  [[ -x $d/bin/kube-controller-manager ]] && return 0
  log "building kube-controller-manager $v (after kube-apiserver: several minutes on 2 cores)"
  prepare "$d"
  kube_wrapper "$d/src" "$v" k8s.io/kubernetes/cmd/kube-controller-manager/app NewControllerManagerCommand
  kube_build "$d" "$v" kube-controller-manager
}

# The lab's node (issue 13): kubelet, kube-scheduler and kubectl from the same
# pinned module, each in its own cache folder like kube-controller-manager, and
# the pause image's binary compiled from the module's C source.
build_node_part() {
  local name=$1 app=$2 ctor=$3 v=$KUBERNETES_VERSION
  local d="$LAB_CACHE/$name-$v"
  [[ -x $d/bin/$name ]] && return 0
  log "building $name $v (after kube-apiserver: 1-3 minutes on 2 cores)"
  prepare "$d"
  kube_wrapper "$d/src" "$v" "$app" "$ctor"
  kube_build "$d" "$v" "$name"
}

build_node() {
  build_node_part kubelet k8s.io/kubernetes/cmd/kubelet/app NewKubeletCommand
  build_node_part kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler/app NewSchedulerCommand
  build_node_part kubectl k8s.io/kubectl/pkg/cmd main:cmd/kubectl/kubectl.go
  local d="$LAB_CACHE/pause-$KUBERNETES_VERSION"
  [[ -x $d/bin/pause ]] && return 0
  prepare "$d"
  local dir; dir=$(cd "$LAB_CACHE/kubelet-$KUBERNETES_VERSION/src" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
  gcc -Os -static -o "$d/bin/pause.tmp" "$dir/build/pause/linux/pause.c"
  mv "$d/bin/pause.tmp" "$d/bin/pause"
}

build_tekton() {
  local d="$LAB_CACHE/tekton-$TEKTON_PIPELINE_VERSION"
  [[ -x $d/bin/controller && -d $d/config ]] && return 0
  log "building Tekton Pipelines controller $TEKTON_PIPELINE_VERSION (cold: several minutes)"
  prepare "$d"
  ( cd "$d/src"
    go mod init lab/tekton >/dev/null 2>&1
    go get "github.com/tektoncd/pipeline@$TEKTON_PIPELINE_VERSION" >/dev/null
    go build -trimpath -ldflags='-s -w' -o "$d/bin/controller.tmp" github.com/tektoncd/pipeline/cmd/controller
    mv "$d/bin/controller.tmp" "$d/bin/controller"
    # CRDs and ConfigMaps ship in the module's config/ folder.
    local src; src=$(go list -m -f '{{.Dir}}' "github.com/tektoncd/pipeline")
    mkdir -p "$d/config.tmp" && cp -r "$src/config/." "$d/config.tmp/" && chmod -R u+w "$d/config.tmp"
    mv "$d/config.tmp" "$d/config" )
}

build_tekton_legacy_crds() {
  local d="$LAB_CACHE/tekton-$TEKTON_LEGACY_VERSION"
  [[ -f $d/config/300-run.yaml ]] && return 0
  log "fetching Tekton $TEKTON_LEGACY_VERSION Run CRD"
  mkdir -p "$d/config" "$d/src"
  ( cd "$d/src"
    [[ -f go.mod ]] || go mod init lab/tektonlegacy >/dev/null 2>&1
    go mod download -json "github.com/tektoncd/pipeline@$TEKTON_LEGACY_VERSION" > dl.json
    local dir; dir=$(python3 -c 'import json,sys; print(json.load(open("dl.json"))["Dir"])')
    cp "$dir/config/300-run.yaml" "$d/config/300-run.yaml.tmp" && chmod u+w "$d/config/300-run.yaml.tmp"
    mv "$d/config/300-run.yaml.tmp" "$d/config/300-run.yaml" )
}

build_tkn() {
  local d="$LAB_CACHE/tkn-$TEKTON_CLI_VERSION"
  [[ -x $d/bin/tkn ]] && return 0
  log "building tkn $TEKTON_CLI_VERSION"
  prepare "$d"
  ( cd "$d/src"
    go mod init lab/tkn >/dev/null 2>&1
    go get "github.com/tektoncd/cli@$TEKTON_CLI_VERSION" >/dev/null
    go build -trimpath -ldflags='-s -w' -o "$d/bin/tkn.tmp" github.com/tektoncd/cli/cmd/tkn
    mv "$d/bin/tkn.tmp" "$d/bin/tkn" )
}

# The root file system of a Ceph release other than the host's, for the
# sites that run it: debootstrap minbase, then Ceph's daemons and CLI from
# the release's suite. Built into <dir>.partial and moved into place only
# once its `ceph --version` is the pinned one.
build_rootfs() {
  local rel=$1 R=${1^^} suite script version d
  suite=CEPH_${R}_SUITE script=CEPH_${R}_SCRIPT version=CEPH_${R}_VERSION
  [[ -n ${!suite:-} ]] || { echo "no Ceph release '$rel' (known: pacific, reef, tentacle)" >&2; exit 2; }
  suite=${!suite} script=${!script} version=${!version}
  d="$LAB_CACHE/rootfs-$rel-$version"
  [[ -x $d/usr/bin/ceph-mon ]] && return 0
  log "building the $rel root file system (Debian $suite, Ceph $version): about 2 minutes, 700 MB"
  local p=$d.partial t0=$SECONDS
  if mountpoint -q "$p/proc"; then umount "$p/proc"; fi
  rm -rf "$p"
  debootstrap --variant=minbase "$suite" "$p" http://deb.debian.org/debian \
    "/usr/share/debootstrap/scripts/$script" >"$LAB_CACHE/rootfs-$rel.log" 2>&1 ||
    { tail -5 "$LAB_CACHE/rootfs-$rel.log" >&2; echo "debootstrap of $suite failed (log: $LAB_CACHE/rootfs-$rel.log)" >&2; exit 1; }
  mount -t proc proc "$p/proc"
  local rc=0
  # SYSTEMD_OFFLINE: tentacle's ceph-mon postinst calls systemctl, which refuses to
  # run in a chroot unless told to act offline.
  chroot "$p" env DEBIAN_FRONTEND=noninteractive SYSTEMD_OFFLINE=1 apt-get install -y --no-install-recommends \
    ceph-mon ceph-osd ceph-mgr rbd-mirror ceph-common >>"$LAB_CACHE/rootfs-$rel.log" 2>&1 || rc=$?
  chroot "$p" apt-get clean >/dev/null 2>&1 || true
  umount "$p/proc"
  ((rc == 0)) || { tail -5 "$LAB_CACHE/rootfs-$rel.log" >&2; echo "installing Ceph into the $rel root failed" >&2; exit 1; }
  local got
  got=$(chroot "$p" ceph --version | awk '{print $3}')
  if [[ $got != "$version"* ]]; then
    echo "Debian $suite now serves Ceph $got, not the pinned $version (the archive keeps only the current" >&2
    echo "version): test with it, then set CEPH_${R}_VERSION=$got in tests/lab/versions.env" >&2
    exit 1
  fi
  mv "$p" "$d"
  log "$rel root file system: Ceph $got, $(du -sh --exclude=proc "$d" | cut -f1), $((SECONDS - t0)) s"
}

what=${1:-all}
case $what in
  etcd) build_etcd ;;
  kube) build_kube ;;
  kcm) build_kcm ;;
  tekton) build_tekton ;;
  legacy) build_tekton_legacy_crds ;;
  tkn) build_tkn ;;
  node) build_node ;;
  all)
    build_etcd; build_kube; build_kcm; build_node; build_tekton; build_tekton_legacy_crds; build_tkn
    # Only the releases the sites and the client run (LAB_CEPH_A/B, LAB_CLIENT).
    for rel in ${LAB_CEPH_A:-pacific} ${LAB_CEPH_B:-pacific} ${LAB_CLIENT:-pacific}; do
      rel=${rel%-upgraded}
      [[ $rel == pacific ]] || build_rootfs "$rel"
    done
    log "all lab binaries are in $LAB_CACHE" ;;
  rootfs) build_rootfs "${2:?usage: build.sh rootfs reef|tentacle}" ;;
  *) echo "usage: build.sh [all|etcd|kube|kcm|tekton|legacy|tkn|node|rootfs <release>]" >&2; exit 2 ;;
esac
