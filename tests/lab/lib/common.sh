# shellcheck shell=bash
# The lab's paths and ports, its log, and how it starts, watches and stops a
# daemon. Sourced first by tests/lab/lab, after LAB_DIR and LAB_CACHE are set.

LOGS=$LAB_DIR/logs
POOL=replicapool
SITES=(a b)

ETCD_BIN=$LAB_CACHE/etcd-$ETCD_VERSION/bin/etcd
APISERVER_BIN=$LAB_CACHE/kubernetes-$KUBERNETES_VERSION/bin/kube-apiserver
KCM_BIN=$LAB_CACHE/kube-controller-manager-$KUBERNETES_VERSION/bin/kube-controller-manager
TEKTON_DIR=$LAB_CACHE/tekton-$TEKTON_PIPELINE_VERSION
TEKTON_BIN=$TEKTON_DIR/bin/controller
ETCD_PORT=22379
API_PORT=16443
TEKTON_PROBES_PORT=18080
KCM_PORT=20257
KUBELET_PORT=20250
KUBELET_HEALTHZ_PORT=20248
SCHEDULER_PORT=20259
# The address Ceph's daemons and the API server serve Pods on: a Pod has a
# loopback of its own, so 127.0.0.1 cannot be it. An address on the host's
# lo, from the benchmarking range (RFC 2544) so that it meets no real
# network; `lab up` adds it and `lab down` takes it away.
LAB_IP=198.18.0.1
LAB_HOSTNAME=rbd-mirror-step-lab
# The Pods' own addresses (the node's CNI bridge, gateway .1).
POD_CIDR=198.18.1.0/24

log() { printf '[lab %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# wait_for <seconds> <description> <command...>: poll with a deadline.
wait_for() {
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || die "timed out after ${secs}s waiting for $what (logs: $LOGS)"
    sleep 0.2
  done
}

# start_daemon <name> <cwd> <command...>: the PID file holds the daemon's own PID
# (no subshell in between: ../shared/ceph-lab.md P4).
start_daemon() {
  local name=$1 cwd=$2; shift 2
  local pidf=$LAB_DIR/pids/$name.pid
  if alive "$name"; then return 0; fi
  mkdir -p "$LAB_DIR/pids" "$LOGS"
  pushd "$cwd" >/dev/null
  nohup "$@" >>"$LOGS/$name.out" 2>&1 </dev/null &
  echo $! >"$pidf"
  popd >/dev/null
}

alive() {
  local pidf=$LAB_DIR/pids/$1.pid pid state
  [[ -f $pidf ]] || return 1
  pid=$(cat "$pidf")
  # A killed daemon can linger as a zombie until init reaps it: not alive.
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z && $state != X ]]
}

# stop_daemon <name> [grace]: SIGTERM, then SIGKILL after the grace period
# (rbd-mirror ignores SIGTERM while its peer is unreachable: ceph-lab.md P6).
stop_daemon() {
  local name=$1 grace=${2:-30} pidf=$LAB_DIR/pids/$1.pid pid
  [[ -f $pidf ]] || return 0
  pid=$(cat "$pidf")
  if kill -0 "$pid" 2>/dev/null; then
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    local end=$((SECONDS + grace))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < end)); do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop in ${grace}s, killing it"
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
  fi
  rm -f "$pidf"
}
