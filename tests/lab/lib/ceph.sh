# shellcheck shell=bash
# The two Ceph sites and rbd-mirror between them. Sourced by tests/lab/lab.

site_port2() { [[ $1 == a ]] && echo 3300 || echo 3301; }
site_port1() { [[ $1 == a ]] && echo 6789 || echo 6790; }
peer_of() { [[ $1 == a ]] && echo b || echo a; }
cconf() { echo "$LAB_DIR/ceph/$1/ceph.conf"; }

# Each site has one OSD, the first its cluster creates; the commands that name
# it (start, mark down) take its id from here.
OSD_ID=0

# ---------------------------------------------------------------- releases
#
# A site runs one Ceph release: pacific (16.2, the host's Debian 12
# packages), reef (18.2, Debian trixie) or tentacle (20.2, Debian forky),
# chosen by LAB_CEPH_A / LAB_CEPH_B when the lab comes up and recorded in
# $LAB_DIR/releases for every later command. A release other than the
# host's runs from a Debian root file system built by build.sh (rootfs).
#
# Its daemons run chrooted into that root. Its command line tools (rbd,
# rados, ceph, ceph-authtool, monmaptool) run on the host's files with the
# root's own loader and libraries, so that they read any path a caller hands
# them (a test's keyring, a controller's tmp dir) as the host's programs do.
#
# tentacle-upgraded is Tentacle as a cluster upgraded from an older release
# has it: cephx allows the old AES keys beside AES-256 and makes AES keys by
# default. A fresh Tentacle (20.2.4) allows only AES-256 keys, which no
# older client or rbd-mirror can use (Ceph's fix for CVE-2025-30156).
RELEASES=(pacific reef tentacle tentacle-upgraded)

# release_base <release>: the Ceph release a lab release runs (its packages).
release_base() { echo "${1%-upgraded}"; }

check_release() {
  [[ " ${RELEASES[*]} " == *" $2 "* ]] ||
    die "$1: no Ceph release '$2' in the lab (known: ${RELEASES[*]})"
}

# release_root <release>: the root file system of its packages; empty for
# the host's.
release_root() {
  local base v
  base=$(release_base "$1")
  [[ $base == pacific ]] && return 0
  v=CEPH_${base^^}_VERSION
  echo "$LAB_CACHE/rootfs-$base-${!v}"
}

site_release() { local v=LAB_CEPH_${1^^}; echo "${!v:-pacific}"; }
site_root() { release_root "$(site_release "$1")"; }

# The client the lab's controllers and tests run (LAB_CLIENT): by default
# the newest release among the sites, since an older client cannot
# authenticate with a fresh newer cluster's keys.
lab_client() {
  if [[ -n ${LAB_CLIENT:-} ]]; then echo "$LAB_CLIENT"; return; fi
  local a b
  a=$(release_base "$(site_release a)"); b=$(release_base "$(site_release b)")
  if [[ $a == tentacle || $b == tentacle ]]; then echo tentacle
  elif [[ $a == reef || $b == reef ]]; then echo reef
  else echo pacific; fi
}

# mk_tools <dir> <release>: rbd, rados, ceph, ceph-authtool and monmaptool of
# that release in <dir>. The host's are links; another release's are
# wrappers that exec its loader (the process is the tool itself: its PID
# is the caller's child's PID, as with the host's).
mk_tools() {
  local d=$1 R prog lib
  R=$(release_root "$2")
  rm -rf "$d"; mkdir -p "$d"
  if [[ -z $R ]]; then
    for prog in rbd rados ceph ceph-authtool monmaptool; do ln -s "$(command -v "$prog")" "$d/$prog"; done
    return 0
  fi
  [[ -x $R/usr/bin/rbd ]] ||
    die "Ceph $2's root $R is not built (tests/lab/build.sh rootfs $(release_base "$2"))"
  lib=$R/usr/lib/x86_64-linux-gnu
  # plugin dir: the release's own compressor and crypto plugins, not the host's.
  # (The $ signs are for the wrappers.)
  # shellcheck disable=SC2016
  for prog in rbd rados ceph-authtool monmaptool; do
    printf '#!/bin/sh\n# %s of Ceph %s, on the host'"'"'s files with its own libraries\nCEPH_ARGS="--plugin-dir %s/ceph${CEPH_ARGS:+ $CEPH_ARGS}" exec %s/lib64/ld-linux-x86-64.so.2 --library-path %s/ceph:%s %s/usr/bin/%s "$@"\n' \
      "$prog" "$2" "$lib" "$R" "$lib" "$lib" "$R" "$prog" >"$d/$prog"
  done
  # ceph is Python: the release's interpreter, its modules, librados.
  # shellcheck disable=SC2016
  printf '#!/bin/sh\n# ceph of Ceph %s, on the host'"'"'s files with its own Python and libraries\nPYTHONHOME=%s/usr CEPH_ARGS="--plugin-dir %s/ceph${CEPH_ARGS:+ $CEPH_ARGS}" exec %s/lib64/ld-linux-x86-64.so.2 --library-path %s/ceph:%s %s/usr/bin/python3 %s/usr/bin/ceph "$@"\n' \
    "$2" "$R" "$lib" "$R" "$lib" "$lib" "$R" "$R" >"$d/ceph"
  chmod +x "$d"/*
}

# site_tool <site> <program>: a command line tool of the site's release
# (the site's admin uses its own cluster's tools).
site_tool() { echo "$LAB_DIR/ceph/bin-$1/$2"; }
# on_site_within <seconds> <site> <program> <args...>: that tool, as the
# site's admin, killed after <seconds> (a frozen or half-started site must
# fail a call, not hang the lab). on_site: the same within a minute.
on_site_within() {
  local secs=$1 n=$2 prog=$3; shift 3
  timeout "$secs" "$(site_tool "$n" "$prog")" -c "$(cconf "$n")" "$@"
}
on_site() { on_site_within 60 "$@"; }

# prepare_site <site>: an empty site directory at $LAB_DIR/ceph/<site>, and
# the site's tools. A site on another release keeps its directory inside
# that release's root at the same path, the host's $LAB_DIR/ceph/<site> a
# symlink to it: the chrooted daemons and the host's commands name the same
# files by the same paths, with no bind mount (removing a root from the
# cache cannot reach the host's files). Its daemons get wrappers that run
# them in the root; the root's /proc is mounted for them and unmounted by
# `lab down`.
prepare_site() {
  local n=$1 R b=$LAB_DIR/ceph/$1 prog bin=$LAB_DIR/ceph/daemons-$1
  R=$(site_root "$n")
  rm -rf "$b" "$bin"
  mk_tools "$LAB_DIR/ceph/bin-$n" "$(site_release "$n")"
  if [[ -z $R ]]; then mkdir -p "$b"; return 0; fi
  rm -rf "${R:?}$b"
  mkdir -p "$R$b" "$bin"
  ln -s "$R$b" "$b"
  mountpoint -q "$R/proc" || mount -t proc proc "$R/proc"
  for prog in ceph-mon ceph-mgr ceph-osd rbd-mirror; do
    # exec all the way (chroot, sh, the program): the PID file holds the
    # daemon's own PID. The caller's directory is kept where the root has
    # it (a site's directory: rbd-mirror reads ./site-<peer>.conf), else /.
    # (The $ signs are for the wrapper, not here.)
    # shellcheck disable=SC2016
    printf '#!/bin/sh\nexec chroot %q /bin/sh -c %q "$PWD" /usr/bin/%s "$@"\n' \
      "$R" '{ cd "$0" || cd /; } 2>/dev/null; exec "$@"' "$prog" >"$bin/$prog"
    chmod +x "$bin/$prog"
  done
}

# ceph_bin <site> <daemon program>: the daemon of the release the site runs.
ceph_bin() {
  if [[ -n $(site_root "$1") ]]; then echo "$LAB_DIR/ceph/daemons-$1/$2"; else echo "$2"; fi
}

# ceph_roots_down: what the sites on other releases left in the roots (their
# directories, /proc), once their daemons are stopped. Every cached root,
# whatever the lab recorded: a lab half started leaves a mount too.
ceph_roots_down() {
  local R
  for R in "$LAB_CACHE"/rootfs-*; do
    [[ -d $R && $R != *.partial ]] || continue
    rm -rf "${R:?}$LAB_DIR"
    if mountpoint -q "$R/proc"; then umount "$R/proc" || umount -l "$R/proc"; fi
  done
}

# The releases the running lab was started with, for every later command.
load_releases() {
  # shellcheck disable=SC1091
  [[ -f $LAB_DIR/releases ]] && source "$LAB_DIR/releases"
  return 0
}

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

# site_failed <site> <daemon> <what>: a site that cannot start says which
# site, which release and the daemon's last log lines, then fails `lab up`
# (which stops everything it started).
site_failed() {
  local n=$1 w=$2 name f rel
  rel=$(site_release "$n")
  case $w in
    osd) name=osd.$OSD_ID ;;
    rbd-mirror) name=client.rbd-mirror.$n ;;
    *) name=$w.$n ;;
  esac
  {
    log "site-$n (Ceph $rel$(release_version "$rel")): $3"
    for f in "$LOGS/ceph-$n-$w.out" "$LAB_DIR/ceph/$n/log/ceph-$name.log" "$LOGS/ceph-$n-mkfs.log"; do
      [[ -s $f ]] || continue
      log "last lines of $f:"
      tail -n 12 "$f" | redact_keys | sed 's/^/    /' >&2
    done
  } 2>&1 | tee "$LOGS/ceph-$n-failed" >&2
  exit 1
}

# Ceph echoes a key it cannot parse ("Malformed input"): none reaches a terminal.
# Both cephx key shapes (AES, and Tentacle's AES-256), as an extended regex.
KEY_RE='AQ[A-Za-z0-9+/]{36}==|Ag[A-Za-z0-9+/]{57}='
redact_keys() { sed -E "s#($KEY_RE)#[key]#g"; }

release_version() {
  local v base
  base=$(release_base "$1")
  [[ $base == pacific ]] && { echo " $(dpkg-query -W -f='${Version}' ceph-common 2>/dev/null | cut -d- -f1 | cut -d+ -f1)"; return; }
  v=CEPH_${base^^}_VERSION
  echo " ${!v}"
}

# wait_for_site <site> <daemon> <seconds> <what> <command...>: wait_for, a
# timeout reported by site_failed.
wait_for_site() {
  local n=$1 w=$2 secs=$3 what=$4; shift 4
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    alive "ceph-$n-$w" || site_failed "$n" "$w" "its $w exited while the lab waited for $what"
    ((SECONDS < end)) || site_failed "$n" "$w" "timed out after ${secs}s waiting for $what"
    sleep 0.2
  done
}

mk_cluster() {
  local n=$1 b=$LAB_DIR/ceph/$1 p2 p1 fsid
  p2=$(site_port2 "$n"); p1=$(site_port1 "$n")
  if [[ -f $b/created ]]; then
    start_site "$n"
    return 0
  fi
  prepare_site "$n"; mkdir -p "$b"/{run,log,mon,mgr,osd}
  fsid=$(uuidgen)
  cat >"$b/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:$LAB_IP:$p2,v1:$LAB_IP:$p1]
public addr = $LAB_IP
cluster addr = $LAB_IP
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
# Debian's Reef and Tentacle builds default this to a relative path, found
# only by an OSD whose working directory is / (as under systemd): an OSD
# started in its site's directory could load no object class, and every
# rbd mirror command failed with EOPNOTSUPP (95).
osd class dir = /usr/lib/x86_64-linux-gnu/rados-classes
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
  local C=$b/ceph.conf keytype=() ciphers=()
  if [[ $(site_release "$n") == tentacle-upgraded ]]; then
    # As an upgrade leaves it: the old AES keys allowed and made by default
    # (Tentacle's own default is AES-256 only).
    keytype=(--key-type aes)
    # shellcheck disable=SC2054
    ciphers=(--auth-allowed-ciphers=aes,aes256k --auth-preferred-cipher=aes --auth-service-cipher=aes)
    printf '\n[mon]\n# without it, AES keys are creatable only from the leader'"'"'s next tick\nmon auth allow insecure key = true\n' >>"$C"
  fi
  local authtool
  authtool=$(site_tool "$n" ceph-authtool)
  "$authtool" --create-keyring "$b/mon.keyring" --gen-key "${keytype[@]}" -n mon. --cap mon 'allow *' >/dev/null
  "$authtool" --create-keyring "$b/ceph.client.admin.keyring" --gen-key "${keytype[@]}" -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
  "$authtool" "$b/mon.keyring" --import-keyring "$b/ceph.client.admin.keyring" >/dev/null
  "$(site_tool "$n" monmaptool)" --create --addv "$n" "[v2:$LAB_IP:$p2,v1:$LAB_IP:$p1]" --fsid "$fsid" \
    "${ciphers[@]}" "$b/monmap" >/dev/null
  mkdir -p "$b/mon/ceph-$n"
  "$(ceph_bin "$n" ceph-mon)" -c "$C" --mkfs -i "$n" --monmap "$b/monmap" --keyring "$b/mon.keyring" 2>>"$LOGS/ceph-$n-mkfs.log" ||
    site_failed "$n" mon "its mon --mkfs failed"
  start_ceph "$n" mon
  wait_for_site "$n" mon 30 "its mon to answer" on_site_within 5 "$n" ceph mon stat
  if [[ $(site_release "$n") == tentacle-upgraded ]]; then
    # What Ceph's upgrade notes advise while older clients remain: the
    # insecure-key checks muted (two of them are HEALTH_ERR).
    local check
    for check in CLIENT_KEY_TYPE KEYS_ALLOWED KEYS_CREATABLE ROTATING_SERVICE_KEY_TYPE SERVICE_KEY_TYPE SERVICE_TICKETS; do
      on_site "$n" ceph health mute "AUTH_INSECURE_$check" --sticky >/dev/null
    done
  fi
  mkdir -p "$b/mgr/ceph-$n"
  on_site "$n" ceph auth get-or-create "mgr.$n" mon 'allow profile mgr' osd 'allow *' mds 'allow *' -o "$b/mgr/ceph-$n/keyring"
  start_ceph "$n" mgr
  local uuid key id
  uuid=$(uuidgen); key=$("$authtool" --gen-print-key "${keytype[@]}")
  id=$(echo "{\"cephx_secret\": \"$key\"}" | on_site "$n" ceph osd new "$uuid" -i -)
  [[ $id == "$OSD_ID" ]] || die "site-$n: Ceph gave the OSD id $id, the lab expects $OSD_ID"
  mkdir -p "$b/osd/ceph-$id"
  "$authtool" --create-keyring "$b/osd/ceph-$id/keyring" --name "osd.$id" --add-key "$key" >/dev/null
  "$(ceph_bin "$n" ceph-osd)" -c "$C" -i "$id" --mkfs --osd-uuid "$uuid" >>"$LOGS/ceph-$n-mkfs.log" 2>&1 ||
    site_failed "$n" osd "its OSD --mkfs failed"
  start_ceph "$n" osd
  wait_for_site "$n" osd 60 "its OSD to be up" osd_up "$n"
  on_site "$n" ceph osd pool create "$POOL" 8 8 >/dev/null 2>&1
  on_site "$n" rbd pool init "$POOL"
  touch "$b/created"
}

osd_up() { [[ $(on_site_within 10 "$1" ceph osd stat -f json 2>/dev/null | jq -r .num_up_osds) == 1 ]]; }

# Least-privilege client for the controller and tests: every mirror image
# operation on the pool, nothing else (no pool create/delete, no auth).
mk_client() {
  local n=$1 b=$LAB_DIR/ceph/$1
  [[ -f $b/client/keyring ]] && return 0
  mkdir -p "$b/client"
  on_site "$n" ceph auth get-or-create client.rbdstep \
    mon 'profile rbd' osd "profile rbd pool=$POOL" mgr "profile rbd pool=$POOL" -o "$b/client/keyring"
  chmod 600 "$b/client/keyring"
  cat >"$b/client/ceph.conf" <<EOF
[global]
mon host = [v2:$LAB_IP:$(site_port2 "$n"),v1:$LAB_IP:$(site_port1 "$n")]
EOF
}

mk_mirroring() {
  [[ -f $LAB_DIR/ceph/mirroring ]] && return 0
  local n
  on_site a rbd mirror pool enable "$POOL" image --site-name site-a
  on_site b rbd mirror pool enable "$POOL" image --site-name site-b
  on_site a rbd mirror pool peer bootstrap create --site-name site-a "$POOL" >"$LAB_DIR/ceph/a/bootstrap-token"
  # The import connects to site-a with the token's key: where the two
  # releases' cephx disagree, this is the first thing to fail.
  on_site b rbd mirror pool peer bootstrap import --site-name site-b --direction rx-tx "$POOL" \
    "$LAB_DIR/ceph/a/bootstrap-token" 2>"$LOGS/bootstrap-import.err" || {
    log "site-b (Ceph $(site_release b)$(release_version "$(site_release b)")) cannot import the bootstrap token of site-a (Ceph $(site_release a)$(release_version "$(site_release a)")):"
    grep -v '^\s*$' "$LOGS/bootstrap-import.err" | tail -n 6 | redact_keys | sed 's/^/    /' >&2
    exit 1
  }
  for n in "${SITES[@]}"; do
    local b=$LAB_DIR/ceph/$n r
    r=$(peer_of "$n")
    on_site "$n" ceph auth get-or-create "client.rbd-mirror.$n" mon 'profile rbd-mirror' osd 'profile rbd' \
      -o "$b/ceph.client.rbd-mirror.$n.keyring"
    mkdir -p "$b/run/remote"
    # rbd-mirror's CephContext for the peer reads ./site-<peer>.conf (ceph-lab.md P1)
    printf '[global]\nrun dir = %s/run/remote\nlog file = %s/log/remote-$cluster-$name.log\n' "$b" "$b" >"$b/site-$r.conf"
    # A snapshot-mirroring schedule, as a Rook CephBlockPool would set.
    on_site "$n" rbd mirror snapshot schedule add --pool "$POOL" 1m >/dev/null 2>&1 || true
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
  h=$(on_site_within 10 "$1" rbd mirror pool status "$POOL" --format json 2>/dev/null | jq -r .summary.daemon_health)
  [[ $h == OK ]]
}

ceph_up() {
  mkdir -p "$LAB_DIR/ceph" "$LOGS"
  # The two clusters are independent: start them side by side.
  local pids=() n i
  for n in "${SITES[@]}"; do mk_cluster "$n" >>"$LOGS/ceph-$n-up.log" 2>&1 & pids+=($!); done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || {
      cat "$LOGS/ceph-${SITES[$i]}-failed" >&2 2>/dev/null || true
      die "site-${SITES[$i]} did not start (see $LOGS/ceph-${SITES[$i]}-up.log)"
    }
  done
  for n in "${SITES[@]}"; do wait_for 60 "osd of site-$n" osd_up "$n"; mk_client "$n"; done
  mk_mirroring
  for n in "${SITES[@]}"; do start_ceph "$n" rbd-mirror; done
  for n in "${SITES[@]}"; do
    wait_for_site "$n" rbd-mirror 90 "its rbd-mirror to report to its mgr (daemon health OK)" mirror_ok "$n"
  done
}

ceph_health_ok() {
  local h
  h=$(on_site_within 10 "$1" ceph health -f json | jq -r .status)
  [[ $h == HEALTH_OK || $h == HEALTH_WARN ]]
}

mirror_reporting() { alive "ceph-$1-rbd-mirror" && mirror_ok "$1"; }
