# shellcheck shell=bash
# The Ceph releases on the lab: `lab capture` (what rbd prints, into the
# fixtures the parsers' unit tests read) and `lab matrix` (every release and
# mixed pair: up, captures, client x cluster, the release scenarios;
# MATRIX.md). Sourced by tests/lab/lab.

FIXTURES=$REPO/tests/fixtures/ceph
# The catalogue's scenarios each release and pair must pass (src/sim/catalogue.rs).
RELEASE_SCENARIOS=planned-failover-snapshot,planned-failover-journal,promote-waits-for-demotion,forced-failover-and-failback-journal,status-of-each-state,demote-in-use
# The pairs `lab matrix` runs by default: each release on both sites, then
# staggered upgrades (one site a release ahead; each site's rbd-mirror
# replays from the other, so one order covers both directions), and Reef
# beside a fresh Tentacle, which Ceph cannot mirror (recorded as a finding).
MATRIX_PAIRS=(pacific-pacific reef-reef tentacle-tentacle pacific-reef reef-tentacle reef-tentacle-upgraded)

# ---------------------------------------------------------------- capture

# cap <name> <site> <rbd args...>: one call of the site's own rbd as its
# admin: stdout in <name>.json, stderr in <name>.stderr, the exit in <name>.exit.
cap() {
  local name=$1 n=$2 rc=0; shift 2
  on_site "$n" rbd "$@" >"$CAP_OUT/$name.json" 2>"$CAP_OUT/$name.stderr" || rc=$?
  echo "$rc" >"$CAP_OUT/$name.exit"
  [[ -s $CAP_OUT/$name.json ]] || rm -f "$CAP_OUT/$name.json"
  [[ -s $CAP_OUT/$name.stderr ]] || rm -f "$CAP_OUT/$name.stderr"
}

cap_rbd() { on_site "$1" rbd "${@:2}"; }

cap_state_is() { [[ $(cap_rbd "$1" mirror image status "$POOL/$2" --format json 2>/dev/null | jq -r .state) == "$3" ]]; }

# The demotion snapshot has arrived, complete, on the site.
cap_demotion_arrived() {
  cap_rbd "$1" snap ls --all "$POOL/$2" --format json 2>/dev/null |
    jq -e 'any(.[]; .namespace.type == "mirror" and .namespace.state == "demoted" and .namespace.complete == true and (.name | startswith(".mirror.non_primary")))' >/dev/null
}

# cap_remove <image...>: gone from both sites, whatever their state.
cap_remove() {
  local f n
  for f in "$@"; do
    for n in a b; do
      cap_rbd "$n" mirror image disable --force "$POOL/$f" >/dev/null 2>&1 || true
      cap_rbd "$n" rm --no-progress "$POOL/$f" >/dev/null 2>&1 || true
    done
  done
}

cap_locked() { [[ $(cap_rbd "$1" lock ls "$POOL/$2" --format json 2>/dev/null | jq length) -ge 1 ]]; }

cap_description_has() {
  cap_rbd "$1" mirror image status "$POOL/$2" --format json 2>/dev/null | jq -e --arg s "$3" '.description | contains($s)' >/dev/null
}

# capture <dir>: from the running lab, site-a primary, site-b its peer, the
# outputs the controller parses and the errors it classifies, each as the
# site's own rbd prints it. Names are fixed (the fixtures' tests read them).
cmd_capture() {
  local dir=${1:-} S=cap-snap J=cap-jrnl K=cap-sb f
  [[ -n $dir ]] || die "usage: lab capture <dir>"
  [[ -f $LAB_DIR/env ]] || die "the lab is not up (run: tests/lab/lab up)"
  CAP_OUT=$dir
  rm -rf "$CAP_OUT"; mkdir -p "$CAP_OUT"
  log "capturing site-a ($(site_release a)) and site-b ($(site_release b)) into $CAP_OUT"
  cap_remove "$S" "$J" "$K"
  cap_rbd a create --size 16M "$POOL/$S"
  cap_rbd a create --size 16M "$POOL/$J"
  cap_rbd a create --size 16M "$POOL/$K"
  for f in $S $J $K; do
    cap_rbd a bench --io-type write --io-size 64K --io-total 1M "$POOL/$f" >/dev/null
  done
  cap_rbd a mirror image enable "$POOL/$S" snapshot >/dev/null
  cap_rbd a mirror image enable "$POOL/$J" journal >/dev/null
  cap_rbd a mirror image enable "$POOL/$K" snapshot >/dev/null
  for f in $S $J $K; do wait_for 120 "$f replaying on site-b" cap_state_is b "$f" up+replaying; done
  # The journal replays what was written after mirroring began, too.
  cap_rbd a bench --io-type write --io-size 4K --io-total 64K "$POOL/$J" >/dev/null
  wait_for 60 "$J's peer status on site-a" cap_state_is a "$J" up+stopped

  cap info-primary a info "$POOL/$S" --format json
  cap info-non-primary b info "$POOL/$S" --format json
  cap info-journal-primary a info "$POOL/$J" --format json
  cap status-primary a mirror image status "$POOL/$S" --format json
  cap status-replaying-snapshot b mirror image status "$POOL/$S" --format json
  cap status-replaying-journal b mirror image status "$POOL/$J" --format json
  cap pool-status-verbose a mirror pool status "$POOL" --verbose --format json
  cap snaps-primary a snap ls --all "$POOL/$S" --format json
  cap snaps-non-primary b snap ls --all "$POOL/$S" --format json
  cap journal-status a journal status --image "$POOL/$J" --format json
  cap lock-ls-idle a lock ls "$POOL/$S" --format json
  # (rbd-mirror holds the lock of the copy it replays into.)
  cap lock-ls-replaying b lock ls "$POOL/$S" --format json

  # Errors.
  cap error-not-found a info "$POOL/cap-missing" --format json
  cap error-promote-peer-primary b mirror image promote "$POOL/$S"
  cap error-resync-primary a mirror image resync "$POOL/$S"
  # A writer holds the exclusive lock: the lab's model of a mounted volume.
  local writer
  cap_rbd a bench --io-type write --io-size 4K --io-threads 1 --io-total 10G --io-pattern rand "$POOL/$S" >/dev/null 2>&1 &
  writer=$!
  wait_for 30 "a writer holding $S's lock" cap_locked a "$S"
  cap lock-ls-in-use a lock ls "$POOL/$S" --format json
  # Pacific refuses this demote; a newer rbd may take the lock over from
  # the writer and demote (the controller's own lock check refuses first).
  cap demote-while-written a mirror image demote "$POOL/$S"
  kill "$writer" 2>/dev/null || true
  wait "$writer" 2>/dev/null || true
  if [[ $(cap_rbd a info "$POOL/$S" --format json | jq -r .mirroring.primary) != true ]]; then
    # Right after the demote, rbd-mirror still holds the image: EROFS a while.
    wait_for 60 "$S promoted again on site-a" cap_rbd a mirror image promote "$POOL/$S"
    wait_for 120 "$S replaying on site-b again" cap_state_is b "$S" up+replaying
  fi
  # A user whose rights are on another pool (with none on the OSDs at all,
  # rbd waits forever instead of failing).
  on_site a ceph auth del client.capture-noaccess >/dev/null 2>&1 || true
  on_site a ceph auth get-or-create client.capture-noaccess mon 'profile rbd' osd 'profile rbd pool=elsewhere' \
    -o "$LAB_DIR/ceph/a/noaccess.keyring" >/dev/null
  cap error-permission-denied a --id capture-noaccess --keyring "$LAB_DIR/ceph/a/noaccess.keyring" info "$POOL/$S" --format json
  # No monitor answers (a port nothing listens on): the connection times out.
  printf '[global]\nmon host = 127.0.0.1:9\n' >"$CAP_OUT/.nomon.conf"
  local rc=0
  timeout 60 "$(site_tool a rbd)" -c "$CAP_OUT/.nomon.conf" --keyring "$LAB_DIR/ceph/a/ceph.client.admin.keyring" \
    --client_mount_timeout 3 info "$POOL/$S" >/dev/null 2>"$CAP_OUT/error-timeout.stderr" || rc=$?
  echo "$rc" >"$CAP_OUT/error-timeout.exit"
  rm -f "$CAP_OUT/.nomon.conf"

  # A planned demotion, as the promote guard reads it on both sites.
  cap_rbd a mirror image demote "$POOL/$S" >/dev/null
  wait_for 90 "the demotion of $S on site-b" cap_demotion_arrived b "$S"
  cap snaps-demoted-primary a snap ls --all "$POOL/$S" --format json
  cap snaps-demotion-arrived b snap ls --all "$POOL/$S" --format json
  cap status-demoted a mirror image status "$POOL/$S" --format json
  cap info-demoted a info "$POOL/$S" --format json
  # EROFS while site-b's rbd-mirror still holds the copy's lock (Transient).
  wait_for 60 "$S promoted on site-b" cap_rbd b mirror image promote "$POOL/$S"
  cap error-already-primary b mirror image promote "$POOL/$S"
  cap error-demote-non-primary a mirror image demote "$POOL/$S"

  # Split-brain: site-b forced primary while site-a is, then site-a demoted.
  wait_for 60 "$K force-promoted on site-b" cap_rbd b mirror image promote --force "$POOL/$K"
  cap_rbd b bench --io-type write --io-size 4K --io-total 16K "$POOL/$K" >/dev/null
  cap_rbd b mirror image snapshot "$POOL/$K" >/dev/null
  cap status-both-primary a mirror image status "$POOL/$K" --format json
  cap_rbd a mirror image demote "$POOL/$K" >/dev/null
  wait_for 120 "split-brain of $K on site-a" cap_description_has a "$K" split-brain
  cap status-split-brain a mirror image status "$POOL/$K" --format json

  cap_remove "$S" "$J" "$K"
  on_site a ceph auth del client.capture-noaccess >/dev/null 2>&1 || true
  rm -f "$LAB_DIR/ceph/a/noaccess.keyring"
  # No key may reach the repository, in either cephx shape.
  if grep -rlE "$KEY_RE" "$CAP_OUT" >/dev/null; then
    die "a capture in $CAP_OUT holds something shaped like a cephx key: not kept"
  fi
  {
    echo "site-a: Ceph $(site_release a)$(release_version "$(site_release a)")"
    echo "site-b: Ceph $(site_release b)$(release_version "$(site_release b)")"
    echo "rbd: $("$(site_tool a rbd)" --version)"
    echo "captured: $(date -u '+%Y-%m-%d %H:%M:%S') UTC by tests/lab/lab capture"
  } >"$CAP_OUT/SOURCE"
  log "captured $(find "$CAP_OUT" -name '*.exit' | wc -l) calls into $CAP_OUT"
}

# ---------------------------------------------------------------- client x cluster

# client_row <client release>: which sites that client's rbd can read with
# the controller's least-privilege key (info, mirror image status).
client_cell() {
  local client=$1 n=$2 d=$LAB_DIR/matrix-client-$1 out rc=0
  [[ -x $d/rbd ]] || mk_tools "$d" "$client" >/dev/null 2>&1 || { echo "not built"; return; }
  out=$(timeout 60 "$d/rbd" -c "$LAB_DIR/ceph/$n/client/ceph.conf" --keyring "$LAB_DIR/ceph/$n/client/keyring" \
    --id rbdstep --client_mount_timeout 15 mirror pool status "$POOL" --format json 2>&1 >/dev/null) || rc=$?
  if ((rc == 0)); then echo ok; return; fi
  # The line that says why, without anything key-shaped (rbd echoes a key it cannot parse).
  out=$(printf '%s\n' "$out" | grep -v '^\s*$' | grep -vE 'failed to query services' | tail -n 1 |
    sed -E 's/[0-9T:.+-]{20,} [0-9a-f]+ +-?[0-9]+ //' | redact_keys)
  echo "fails (exit $rc): ${out//|/\\|}"
}

# ---------------------------------------------------------------- matrix

# lab matrix [PAIR...]: each pair (site-a release - site-b release) on a fresh
# lab with the client LAB_CLIENT (default tentacle, the one the image ships):
# up, the release scenarios, the captures of a release's first same-release
# pair into tests/fixtures/ceph, and which client reads which site. Writes
# MATRIX.md; the exit is non-zero if any pair failed unexpectedly.
cmd_matrix() {
  local pairs=("$@") out=$REPO/MATRIX.md rows=() crows=() t_start=$SECONDS started p a b rc
  ((${#pairs[@]})) || pairs=("${MATRIX_PAIRS[@]}")
  started=$(date -u '+%Y-%m-%d %H:%M:%S')
  local client=${REQ_CLIENT:-tentacle} failed=0
  mkdir -p "$LOGS"
  for p in "${pairs[@]}"; do
    a=$(pair_site "$p" a) b=$(pair_site "$p" b)
    check_release "pair $p" "$a"; check_release "pair $p" "$b"
  done
  for p in "${pairs[@]}"; do
    a=$(pair_site "$p" a) b=$(pair_site "$p" b)
    local t0=$SECONDS mlog=$LAB_DIR.matrix-$p.log up="" scen="" caps="-" dur
    log "matrix: $p (site-a $a, site-b $b, client $client)"
    rc=0
    touch "$mlog.start"
    ( REQ_CEPH_A=$a REQ_CEPH_B=$b REQ_CLIENT=$client; cmd_up ) >"$mlog" 2>&1 || rc=$?
    if ((rc != 0)); then
      # The finding is the error itself: which site, which daemon, its log.
      up="**did not start**: $({ grep -m1 -E 'site-[ab] \(Ceph' "$mlog" || true; } | sed 's/^\[lab [0-9:]*\] //' | md_cell_text)"
      local why
      why=$({ grep -E 'handle_auth|Malformed|Permission denied|decode|error' "$mlog" || true; } | { grep -v '^\[lab' || true; } |
        tail -n 2 | sed -E 's/^ +//; s/^[0-9T:.+-]{20,} [0-9a-f]+ +-?[0-9]+ //' | tr '\n' ' ' | md_cell_text)
      [[ -n $why ]] && up="$up; $why"
      rows+=("| $p | $a | $b | $up | - | - | $(fmt_secs $((SECONDS - t0))) | $(date -u '+%Y-%m-%d %H:%M') |")
      log "matrix: $p did not start (log: $mlog)"
      if expected_unstartable "$a" "$b"; then
        rows[-1]=${rows[-1]/did not start\*\*/did not start** (expected: Ceph does not support it)}
      else
        failed=1
        show_log_tail "$mlog"
      fi
      matrix_write
      continue
    fi
    load_releases
    up="up in $(fmt_secs $((SECONDS - t0)))"
    # Fixtures: the first same-release pair of each release.
    if [[ $a == "$b" ]]; then
      local fx
      fx="$FIXTURES/$(release_base "$a")$(release_version "$a" | tr -d ' ' | sed 's/^/-/')"
      [[ $a == tentacle-upgraded ]] && fx="${fx}-upgraded"
      if ( cmd_capture "$fx" ) >>"$mlog" 2>&1; then caps="$(find "$fx" -name '*.exit' | wc -l) calls"; else caps="**FAIL**"; failed=1; fi
    fi
    local c cells
    for c in pacific reef tentacle; do
      cells="| $p | $c | $(client_cell "$c" a) | $(client_cell "$c" b) |"
      crows+=("$cells")
    done
    local ts=$SECONDS
    # shellcheck disable=SC1091
    if ( source "$LAB_DIR/env"; cd "$REPO" && CONFORMANCE=$RELEASE_SCENARIOS cargo test --locked --test conformance -- --nocapture ) >>"$mlog" 2>&1; then
      scen="pass ($(fmt_secs $((SECONDS - ts))))"
    else
      scen="**FAIL** ($({ grep -m1 -E 'disagree|panicked' "$mlog" || true; } | md_cell_text))"
      if expected_unstartable "$a" "$b"; then scen="$scen (expected: Ceph does not support it)"; else failed=1; show_log_tail "$mlog"; fi
    fi
    dur=$(fmt_secs $((SECONDS - t0)))
    # After the scenarios: the sites have run the work (memstore holds the data).
    rows+=("| $p | $a$(release_version "$a"), $(site_rss a) | $b$(release_version "$b"), $(site_rss b) | $up | $scen | $caps | $dur | $(date -u '+%Y-%m-%d %H:%M') |")
    log "matrix: $p: $scen (log: $mlog)"
    matrix_write
  done
  matrix_write

  log "wrote $out"
  return "$failed"
}

# show_log_tail <log>: an unexpected failure's last lines, keys redacted, on
# stderr: a CI run shows why without its log files.
show_log_tail() {
  local f
  echo "---- last 60 lines of $1 ----" >&2
  tail -n 60 "$1" | redact_keys >&2
  # A lab up that failed kept its logs: the sites' own, newer than this log's start.
  for f in "$LAB_DIR".failed-logs/{ceph-?-up.log,bootstrap-import.err,ceph-?-*.out}; do
    [[ -s $f && $f -nt $1.start ]] || continue
    echo "---- last 20 lines of $f ----" >&2
    tail -n 20 "$f" | redact_keys >&2
  done
  echo "---- end of $1 ----" >&2
}

# site_rss <site>: the resident memory of the site's four daemons, in MiB.
site_rss() {
  local d kb=0 pid
  for d in mon mgr osd rbd-mirror; do
    pid=$(cat "$LAB_DIR/pids/ceph-$1-$d.pid" 2>/dev/null) || continue
    kb=$((kb + $(awk '/^VmRSS:/{print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)))
  done
  echo "$((kb / 1024)) MiB"
}

# matrix_write: MATRIX.md from cmd_matrix's rows so far (its locals: pairs,
# rows, crows, started, t_start, client, out), written after every pair so
# that an interrupted run keeps what it measured.
matrix_write() {
  # The rows of pairs not run this time stay, each with its own date.
  local keep1=() keep2=() line pair np
  if [[ -f $out ]]; then
    while IFS= read -r line; do
      [[ $line =~ ^\|\ ([a-z-]+)\ \| ]] || continue
      pair=${BASH_REMATCH[1]}
      [[ $pair == pair || " ${pairs[*]} " == *" $pair "* ]] && continue
      np=$(printf '%s' "${line//\\|/}" | tr -cd '|' | wc -c)
      if ((np == 9)); then keep1+=("$line"); elif ((np == 5)); then keep2+=("$line"); fi
    done <"$out"
  fi
  {
    echo "# Ceph releases on the lab"
    echo
    echo "Written by \`tests/lab/lab matrix [PAIR...]\` (tests/lab/lib/releases.sh); not edited by hand. Last written by"
    echo "\`lab matrix ${pairs[*]}\`, started $started UTC, $(fmt_secs $((SECONDS - t_start))) in all, on commit"
    echo "$(git -C "$REPO" rev-parse --short HEAD); the rows of pairs not run then are kept from earlier runs, each with its date."
    echo
    echo "Each pair is a fresh lab: site-a and site-b on the releases named, mirroring both ways (rbd-mirror on each"
    echo "site), the controller's client \`$client\`. Scenarios: \`$RELEASE_SCENARIOS\`"
    echo "(src/sim/catalogue.rs, run by tests/conformance.rs on the real sites, each end compared with the model's)."
    echo "Captures: tests/fixtures/ceph/, read by src/ceph/captured.rs. Memory: the resident size of each site's mon,"
    echo "mgr, OSD (memstore: it holds the data) and rbd-mirror, after the scenarios."
    echo
    echo "| pair | site-a (release, memory) | site-b (release, memory) | lab | scenarios | captures | duration | ended (UTC) |"
    echo "|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${keep1[@]}" "${rows[@]}" | grep -v '^$' | sort -t'|' -k2,2 -s
    echo
    echo "## Client x cluster"
    echo
    echo "Each client's \`rbd mirror pool status\` with the controller's least-privilege key, per site of each pair that started."
    echo
    echo "| pair | client | site-a | site-b |"
    echo "|---|---|---|---|"
    printf '%s\n' "${keep2[@]}" "${crows[@]}" | grep -v '^$' | sort -t'|' -k2,2 -s
  } >"$out"
}

# pair_site <pair> a|b: the pair is "<a>-<b>", either may be tentacle-upgraded.
pair_site() {
  local p=$1 a
  case $p in
    tentacle-upgraded-*) a=tentacle-upgraded ;;
    *) a=${p%%-*} ;;
  esac
  if [[ $2 == a ]]; then echo "$a"; else echo "${p#"$a"-}"; fi
}

# A fresh Tentacle allows only AES-256 keys, which no older rbd-mirror can
# use: a pair of it with an older release cannot mirror (a finding, expected).
expected_unstartable() {
  local a=$1 b=$2
  [[ $a == tentacle && $(release_base "$b") != tentacle ]] ||
    [[ $b == tentacle && $(release_base "$a") != tentacle ]]
}

md_cell_text() { sed 's/|/\\|/g'; }
