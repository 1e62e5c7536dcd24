# shellcheck shell=bash
# The two Ceph sites and rbd-mirror between them. Sourced by tests/lab/lab.

site_port2() { [[ $1 == a ]] && echo 3300 || echo 3301; }
site_port1() { [[ $1 == a ]] && echo 6789 || echo 6790; }
peer_of() { [[ $1 == a ]] && echo b || echo a; }
cconf() { echo "$LAB_DIR/ceph/$1/ceph.conf"; }

# Each site has one OSD, the first its cluster creates; the commands that name
# it (start, mark down) take its id from here.
OSD_ID=0

# ceph_bin <site> <program>: the daemon program of the Ceph release the site
# runs. Both sites run the Ceph on PATH today; a site on another release
# changes only this (a path or a wrapper that execs: the PID file must hold the
# daemon's own PID).
ceph_bin() { echo "$2"; }

# start_ceph <site> <daemon>: every start of a site's daemon, the first and
# any after a stop, goes through here. daemon: mon mgr osd rbd-mirror.
start_ceph() {
  local n=$1 w=$2 b=$LAB_DIR/ceph/$1 C=$LAB_DIR/ceph/$1/ceph.conf
  case $w in
    mon | mgr) start_daemon "ceph-$n-$w" "$b" "$(ceph_bin "$n" "ceph-$w")" -c "$C" -i "$n" -f ;;
    osd) start_daemon "ceph-$n-osd" "$b" "$(ceph_bin "$n" ceph-osd)" -c "$C" -i "$OSD_ID" -f ;;
    rbd-mirror) start_daemon "ceph-$n-rbd-mirror" "$b" "$(ceph_bin "$n" rbd-mirror)" -c "$C" --id "rbd-mirror.$n" -f ;;
    *) die "no such Ceph daemon: $w" ;;
  esac
}

mk_cluster() {
  local n=$1 b=$LAB_DIR/ceph/$1 p2 p1 fsid
  p2=$(site_port2 "$n"); p1=$(site_port1 "$n")
  if [[ -f $b/created ]]; then
    start_site "$n"
    return 0
  fi
  rm -rf "$b"; mkdir -p "$b"/{run,log,mon,mgr,osd}
  fsid=$(uuidgen)
  cat >"$b/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$p2,v1:127.0.0.1:$p1]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = $b/run
log file = $b/log/\$cluster-\$name.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
osd crush chooseleaf type = 0
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false

[mon]
mon data = $b/mon/\$cluster-\$id
mon cluster log file = $b/log/\$cluster.\$channel.log
mgr initial modules = iostat

[mgr]
mgr data = $b/mgr/\$cluster-\$id

[osd]
osd data = $b/osd/\$cluster-\$id
osd objectstore = memstore
memstore device bytes = 4294967296
# without this, SIGTERM skips umount and memstore never saves (ceph-lab.md P7)
osd fast shutdown = false
# every thaw marks the OSD down to re-peer (faults.sh); by default an OSD
# marked down 6 times in 10 minutes shuts itself down
osd max markdown count = 1000

[client]
keyring = $b/\$cluster.\$name.keyring

[client.rbd-mirror.$n]
admin socket = \$run_dir/\$cluster-\$name.asok
rbd mirror journal poll age = 1
rbd mirror image state check interval = 5
rbd mirror pool replayers refresh interval = 5
rbd mirror delete retry interval = 5
EOF
  local C=$b/ceph.conf
  ceph-authtool --create-keyring "$b/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool --create-keyring "$b/ceph.client.admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
  ceph-authtool "$b/mon.keyring" --import-keyring "$b/ceph.client.admin.keyring" >/dev/null
  monmaptool --create --addv "$n" "[v2:127.0.0.1:$p2,v1:127.0.0.1:$p1]" --fsid "$fsid" "$b/monmap" >/dev/null
  mkdir -p "$b/mon/ceph-$n"
  "$(ceph_bin "$n" ceph-mon)" -c "$C" --mkfs -i "$n" --monmap "$b/monmap" --keyring "$b/mon.keyring" 2>>"$LOGS/ceph-$n-mkfs.log"
  start_ceph "$n" mon
  wait_for 30 "mon of site-$n" timeout 5 ceph -c "$C" mon stat
  mkdir -p "$b/mgr/ceph-$n"
  ceph -c "$C" auth get-or-create "mgr.$n" mon 'allow profile mgr' osd 'allow *' mds 'allow *' -o "$b/mgr/ceph-$n/keyring"
  start_ceph "$n" mgr
  local uuid key id
  uuid=$(uuidgen); key=$(ceph-authtool --gen-print-key)
  id=$(echo "{\"cephx_secret\": \"$key\"}" | ceph -c "$C" osd new "$uuid" -i -)
  [[ $id == "$OSD_ID" ]] || die "site-$n: Ceph gave the OSD id $id, the lab expects $OSD_ID"
  mkdir -p "$b/osd/ceph-$id"
  ceph-authtool --create-keyring "$b/osd/ceph-$id/keyring" --name "osd.$id" --add-key "$key" >/dev/null
  "$(ceph_bin "$n" ceph-osd)" -c "$C" -i "$id" --mkfs --osd-uuid "$uuid" >>"$LOGS/ceph-$n-mkfs.log" 2>&1
  start_ceph "$n" osd
  wait_for 60 "osd of site-$n" osd_up "$n"
  ceph -c "$C" osd pool create "$POOL" 8 8 >/dev/null 2>&1
  timeout 60 rbd -c "$C" pool init "$POOL"
  touch "$b/created"
}

osd_up() { [[ $(timeout 10 ceph -c "$(cconf "$1")" osd stat -f json 2>/dev/null | jq -r .num_up_osds) == 1 ]]; }

# Least-privilege client for the controller and tests: every mirror image
# operation on the pool, nothing else (no pool create/delete, no auth).
mk_client() {
  local n=$1 b=$LAB_DIR/ceph/$1
  [[ -f $b/client/keyring ]] && return 0
  mkdir -p "$b/client"
  ceph -c "$b/ceph.conf" auth get-or-create client.rbdstep \
    mon 'profile rbd' osd "profile rbd pool=$POOL" mgr "profile rbd pool=$POOL" -o "$b/client/keyring"
  chmod 600 "$b/client/keyring"
  cat >"$b/client/ceph.conf" <<EOF
[global]
mon host = [v2:127.0.0.1:$(site_port2 "$n"),v1:127.0.0.1:$(site_port1 "$n")]
EOF
}

mk_mirroring() {
  [[ -f $LAB_DIR/ceph/mirroring ]] && return 0
  local A B
  A=$(cconf a); B=$(cconf b)
  rbd -c "$A" mirror pool enable "$POOL" image --site-name site-a
  rbd -c "$B" mirror pool enable "$POOL" image --site-name site-b
  rbd -c "$A" mirror pool peer bootstrap create --site-name site-a "$POOL" >"$LAB_DIR/ceph/a/bootstrap-token"
  rbd -c "$B" mirror pool peer bootstrap import --site-name site-b --direction rx-tx "$POOL" "$LAB_DIR/ceph/a/bootstrap-token"
  for n in "${SITES[@]}"; do
    local b=$LAB_DIR/ceph/$n r
    r=$(peer_of "$n")
    ceph -c "$b/ceph.conf" auth get-or-create "client.rbd-mirror.$n" mon 'profile rbd-mirror' osd 'profile rbd' \
      -o "$b/ceph.client.rbd-mirror.$n.keyring"
    mkdir -p "$b/run/remote"
    # rbd-mirror's CephContext for the peer reads ./site-<peer>.conf (ceph-lab.md P1)
    printf '[global]\nrun dir = %s/run/remote\nlog file = %s/log/remote-$cluster-$name.log\n' "$b" "$b" >"$b/site-$r.conf"
    # A snapshot-mirroring schedule, as a Rook CephBlockPool would set.
    rbd -c "$b/ceph.conf" mirror snapshot schedule add --pool "$POOL" 1m >/dev/null 2>&1 || true
  done
  touch "$LAB_DIR/ceph/mirroring"
}

start_site() {
  local n=$1 w
  for w in mon mgr osd; do start_ceph "$n" "$w"; done
  [[ -f $LAB_DIR/ceph/mirroring ]] && start_ceph "$n" rbd-mirror
  return 0
}

mirror_ok() {
  local h
  # daemon_health: both daemons report to the mgr. (summary.health also
  # counts images, which tests leave in every state on purpose.)
  h=$(timeout 10 rbd -c "$(cconf "$1")" mirror pool status "$POOL" --format json 2>/dev/null | jq -r .summary.daemon_health)
  [[ $h == OK ]]
}

ceph_up() {
  mkdir -p "$LAB_DIR/ceph" "$LOGS"
  # The two clusters are independent: start them side by side.
  local pids=()
  for n in "${SITES[@]}"; do mk_cluster "$n" >>"$LOGS/ceph-$n-up.log" 2>&1 & pids+=($!); done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || die "site-${SITES[$i]} did not start (see $LOGS/ceph-${SITES[$i]}-up.log)"
  done
  for n in "${SITES[@]}"; do wait_for 60 "osd of site-$n" osd_up "$n"; mk_client "$n"; done
  mk_mirroring
  for n in "${SITES[@]}"; do start_ceph "$n" rbd-mirror; done
  for n in "${SITES[@]}"; do wait_for 90 "rbd-mirror daemon health OK on site-$n" mirror_ok "$n"; done
}

ceph_health_ok() {
  local h
  h=$(timeout 10 ceph -c "$(cconf "$1")" health -f json | jq -r .status)
  [[ $h == HEALTH_OK || $h == HEALTH_WARN ]]
}

mirror_reporting() { alive "ceph-$1-rbd-mirror" && mirror_ok "$1"; }
