# shellcheck shell=bash
# Faults for the tests: a site frozen and thawed, single daemons stopped and
# started. Sourced by tests/lab/lab.

site_daemons() { echo "ceph-$1-rbd-mirror ceph-$1-osd ceph-$1-mgr ceph-$1-mon"; }

cmd_signal() {
  local sig=$1 site=${2:-} d
  site=${site#site-}
  [[ $site == a || $site == b ]] || die "usage: lab freeze|thaw site-a|site-b"
  for d in $(site_daemons "$site"); do
    alive "$d" && kill "-$sig" "$(cat "$LAB_DIR/pids/$d.pid")"
  done
  log "site-$site: sent SIG$sig to every daemon"
}

# A thawed site is only useful to a test once it serves I/O and its
# rbd-mirror reports again. After a freeze the OSD's placement groups stay
# "laggy" for good (their read lease expired while frozen): every op on them
# blocks, rbd-mirror included (seen: 29 slow ops, rbd-mirror silent even after
# a restart). The PG states the mgr reports just after a thaw are the stale
# ones from before the freeze, so they cannot tell; the thaw therefore always
# marks the OSD down, which makes it re-peer and clears the leases within
# seconds, and then waits for a real read of every placement group of the
# pool (`rados ls`) to answer.
pool_answers() { on_site_within 5 "$1" rados -p "$POOL" ls >/dev/null 2>&1; }

repeer() {
  local site=$1
  on_site_within 10 "$site" ceph osd down "$OSD_ID" >/dev/null 2>&1 || true
  wait_for 60 "site-$site osd up after re-peering" osd_up "$site"
}

cmd_thaw() {
  local site=${1:-}
  cmd_signal CONT "$site"
  site=${site#site-}
  wait_for 60 "site-$site osd up after thaw" osd_up "$site"
  repeer "$site"
  local end=$((SECONDS + 30))
  until pool_answers "$site"; do
    if ((SECONDS >= end)); then
      log "site-$site: pool still not answering 30s after re-peering, re-peering again"
      repeer "$site"
      wait_for 60 "site-$site pool answering reads" pool_answers "$site"
      break
    fi
    sleep 0.5
  done
  end=$((SECONDS + 45))
  until mirror_reporting "$site" >/dev/null 2>&1; do
    if ((SECONDS >= end)); then
      log "site-$site: rbd-mirror does not report 45s after thaw, restarting it"
      stop_daemon "ceph-$site-rbd-mirror" 10
      start_ceph "$site" rbd-mirror
      wait_for 90 "rbd-mirror reporting on site-$site after restart" mirror_reporting "$site"
      break
    fi
    sleep 0.5
  done
  log "site-$site: serving and its rbd-mirror reporting"
}

cmd_stopstart() {
  local verb=$1 site=${2:-}; shift 2 || true
  site=${site#site-}
  [[ $site == a || $site == b ]] || die "usage: lab stop|start site-a|site-b [mon mgr osd rbd-mirror]"
  local which=("$@")
  ((${#which[@]})) || which=(rbd-mirror osd mgr mon)
  if [[ $verb == stop ]]; then
    for w in rbd-mirror osd mgr mon; do
      # (An `a && b` as the loop's last command would make `lab stop` fail
      # whenever mon is not among the daemons asked for.)
      [[ " ${which[*]} " == *" $w "* ]] || continue
      stop_daemon "ceph-$site-$w" 30
    done
  else
    for w in mon mgr osd rbd-mirror; do
      [[ " ${which[*]} " == *" $w "* ]] || continue
      start_ceph "$site" "$w"
    done
  fi
}

# The control plane's daemons by the names the fault commands take.
control_daemon() {
  case ${1:-} in
    apiserver) echo kube-apiserver ;;
    etcd) echo etcd ;;
    tekton) echo tekton-controller ;;
    controller-manager) echo kube-controller-manager ;;
    *) die "usage: lab pause|resume|restart apiserver|etcd|tekton|controller-manager" ;;
  esac
}

# pause|resume <part>: SIGSTOP/SIGCONT one control-plane daemon (a hung
# API server or etcd, as a client sees it: connections open, no answers).
cmd_pause() {
  local sig=$1 d
  d=$(control_daemon "${2:-}")
  alive "$d" || die "$d is not running"
  kill "-$sig" "$(cat "$LAB_DIR/pids/$d.pid")"
  log "$d: sent SIG$sig"
}

# compact: etcd forgets every revision before now (through its JSON gateway:
# the lab builds no etcdctl). A watch resumed from an older resourceVersion
# then gets 410 Gone even where the API server would ask etcd.
cmd_compact() {
  local rev
  rev=$(curl -fsS -X POST "http://127.0.0.1:$ETCD_PORT/v3/kv/range" -d '{"key":"AA=="}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["header"]["revision"])') ||
    die "etcd did not answer its revision"
  curl -fsS -X POST "http://127.0.0.1:$ETCD_PORT/v3/kv/compaction" -d "{\"revision\": \"$rev\", \"physical\": true}" >/dev/null ||
    die "etcd refused to compact at revision $rev"
  log "etcd: compacted up to revision $rev"
}

# kill <part>: SIGKILL it and leave it down (a crash; the part's clients
# see connections refused). `restart <part>` starts it again.
cmd_kill() {
  local d pid
  d=$(control_daemon "${1:-}")
  alive "$d" || die "$d is not running"
  pid=$(cat "$LAB_DIR/pids/$d.pid")
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$LAB_DIR/pids/$d.pid"
  log "$d: killed"
}

# restart <part>: stop it (SIGTERM, SIGKILL after 5 s: the API server drains
# its watches for longer than that, and a crash is what this stands for)
# and start it again, waiting until it serves. Every watch is dropped.
cmd_restart() {
  local d
  d=$(control_daemon "${1:-}")
  kill -CONT "$(cat "$LAB_DIR/pids/$d.pid" 2>/dev/null)" 2>/dev/null || true
  stop_daemon "$d" 5
  # Only that part: `lab up` would find the lab partly down and start it
  # afresh, under the test that restarts it.
  case $d in
    kube-apiserver | etcd) kube_up ;;
    tekton-controller) tekton_up ;;
    kube-controller-manager) kcm_up ;;
  esac
  log "$d: restarted"
}
