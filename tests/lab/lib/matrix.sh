# shellcheck shell=bash
# lab faults [ROW...]: the fault matrix of faults.md on the lab. Each row's
# tests come from tests/lab/faults-matrix.tsv (its header says the columns);
# every distinct test of the rows asked for (default: every row) runs once,
# timed, and FAULTS.md at the repository's root reports each row: passed,
# failed or not covered, and whether its evidence is the lab or the model.
# Sourced by tests/lab/lab.

MATRIX_TSV=$LAB_HOME/faults-matrix.tsv
# The rows CI must keep green (the fault-matrix issue), run by `lab faults --ci`.
FAULTS_CI_ROWS=(A1 A3 A5 A6 B2 C1 C2 C3a C4 D2 D4 D5 D6 E1)

# lab faults --ci [N]: the CI rows N times in a row (default 3), stopping at
# the first failure; FAULTS-CI.md holds the last run and every run's line.
cmd_faults_ci() {
  # (Not "n": `lab up` loops over the sites with a global n, which bash's
  # dynamic scoping would make this function's.)
  local runs_wanted=${1:-3} i rc=0 t0 runs=() out=$REPO/FAULTS-CI.md
  for ((i = 1; i <= runs_wanted; i++)); do
    log "CI subset of the fault matrix: run $i of $runs_wanted"
    t0=$SECONDS
    rc=0
    FAULTS_OUT=$out FAULTS_CMD="faults --ci $runs_wanted" cmd_faults "${FAULTS_CI_ROWS[@]}" || rc=$?
    runs+=("| $i | $(date -u '+%Y-%m-%d %H:%M:%S') | $( ((rc == 0)) && echo pass || echo '**FAIL**') | $(fmt_secs $((SECONDS - t0))) |")
    ((rc == 0)) || break
  done
  {
    echo
    echo "## Runs in a row"
    echo
    echo "| run | ended (UTC) | result | duration |"
    echo "|---|---|---|---|"
    printf '%s\n' "${runs[@]}"
  } >>"$out"
  log "wrote $out: ${#runs[@]} runs of the CI rows"
  return "$rc"
}

# 83 -> 1m23s
fmt_secs() {
  local s=$1
  if ((s >= 60)); then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}

# A Markdown table cell: a pipe would end it.
md_cell() { printf '%s' "${1//|/\\|}"; }

# What a passing test proves, by the binary that holds it.
evidence_of() {
  case $1 in
    -) echo "-" ;;
    model_faults) echo "model only (simulation, not lab evidence)" ;;
    conformance) echo "lab: step executor on real Ceph (no controller, no Kubernetes)" ;;
    *) echo "lab: controller, Kubernetes and Ceph" ;;
  esac
}

cmd_faults() {
  if [[ ${1:-} == --ci ]]; then
    shift
    cmd_faults_ci "$@"
    return
  fi
  [[ -f $MATRIX_TSV ]] || die "no fault matrix at $MATRIX_TSV"
  local t_start=$SECONDS started all=() rows=() partial=0
  started=$(date -u '+%Y-%m-%d %H:%M:%S')
  # The matrix, one row per line: 8 fields (\x1f keeps them apart where a
  # tab, being white space to `read`, would not).
  declare -A m_bin=() m_tests=() m_inv=() m_note=() m_ci=() m_env=() m_exp=()
  local r bin tests inv note ci envs exp
  while IFS=$'\x1f' read -r r bin tests inv note ci envs exp; do
    all+=("$r")
    m_bin[$r]=$bin m_tests[$r]=$tests m_inv[$r]=$inv m_note[$r]=$note
    m_ci[$r]=$ci m_env[$r]=$envs m_exp[$r]=$exp
  done < <(awk -F'\t' -v OFS=$'\x1f' '!/^#/ && NF {$1 = $1; print}' "$MATRIX_TSV")

  # The rows asked for (any case), in the matrix's order.
  local id found
  declare -A asked=()
  for r in "$@"; do
    found=
    for id in "${all[@]}"; do [[ ${id,,} == "${r,,}" ]] && found=$id; done
    [[ -n $found ]] || die "no row $r in $MATRIX_TSV (rows: ${all[*]})"
    asked[$found]=1
  done
  ((${#asked[@]})) && partial=1
  for id in "${all[@]}"; do
    if ((!partial)) || [[ -n ${asked[$id]:-} ]]; then rows+=("$id"); fi
  done

  # The distinct tests of these rows, in row order: binary, env, test.
  local runs=() bins=() t key
  declare -A seen=()
  for r in "${rows[@]}"; do
    bin=${m_bin[$r]}
    [[ $bin == - ]] && continue
    for t in ${m_tests[$r]}; do
      key=$bin$'\x1f'${m_env[$r]}$'\x1f'$t
      [[ -n ${seen[$key]:-} ]] || runs+=("$key")
      seen[$key]=1
    done
    [[ " ${bins[*]} " == *" $bin "* ]] || bins+=("$bin")
  done

  local t_up=0 t_build=0 t0 logdir=$LAB_DIR/logs/faults
  declare -A result=() secs=() logs=()
  if ((${#runs[@]})); then
    log "fault matrix: rows ${rows[*]}: ${#runs[@]} test runs"
    cmd_up
    t_up=$((SECONDS - t_start))
    # shellcheck disable=SC1091
    source "$LAB_DIR/env"
    mkdir -p "$logdir"
    cd "$REPO" || die "cannot cd to $REPO"
    local build=() b
    for b in "${bins[@]}"; do build+=(--test "$b"); done
    t0=$SECONDS
    cargo test --locked --no-run "${build[@]}" || die "cargo test --no-run failed"
    t_build=$((SECONDS - t0))
    local n=0 assigns=() logf rc
    for key in "${runs[@]}"; do
      IFS=$'\x1f' read -r bin envs t <<<"$key"
      n=$((n + 1))
      assigns=()
      [[ $envs == - ]] || read -ra assigns <<<"$envs"
      logf=$logdir/$(date -u +%Y%m%dT%H%M%S)-$bin-${t//::/-}.log
      log "[$n/${#runs[@]}] ${assigns[*]}${assigns[*]:+ }cargo test --locked --test $bin -- --exact $t (log: $logf)"
      t0=$SECONDS
      rc=0
      # --include-ignored: a test too long for every CI run is #[ignore]d
      # there (cargo reports it as ignored) and runs here.
      env "${assigns[@]}" cargo test --locked --test "$bin" -- --exact "$t" --include-ignored 2>&1 | tee "$logf" || rc=$?
      secs[$key]=$((SECONDS - t0))
      logs[$key]=$logf
      # A name that matches nothing runs 0 tests and exits 0: only "1 passed" passes.
      if ((rc == 0)) && grep -q '^test result: ok\. 1 passed' "$logf"; then
        result[$key]=pass
      elif ((rc == 0)); then
        result[$key]="no test of that name ran"
      else
        result[$key]="failed, exit $rc"
      fi
      log "[$n/${#runs[@]}] $bin $t: ${result[$key]} in $(fmt_secs "${secs[$key]}")"
    done
  fi
  local t_total=$((SECONDS - t_start))

  # ------------------------------------------------------------ the report
  local passed=0 failed=0 uncovered=0 model=0 part=0 rowres rowsecs dur testcell qual
  local lines=() failures=()
  for r in "${rows[@]}"; do
    bin=${m_bin[$r]} envs=${m_env[$r]}
    rowsecs=0 dur=- testcell=-
    if [[ $bin == - ]]; then
      rowres="not covered"
      uncovered=$((uncovered + 1))
    else
      rowres=pass testcell=
      for t in ${m_tests[$r]}; do
        key=$bin$'\x1f'$envs$'\x1f'$t
        rowsecs=$((rowsecs + ${secs[$key]:-0}))
        testcell+="${testcell:+ }\`$bin::$t\`"
        if [[ ${result[$key]:-} != pass ]]; then
          rowres="**FAIL**"
          failures+=("$r: $bin::$t: ${result[$key]:-not run}; log: ${logs[$key]:-none}")
        fi
      done
      [[ $envs == - ]] || testcell+=" with \`$envs\`"
      dur=$(fmt_secs "$rowsecs")
      # What the pass is worth: on the model only, and/or part of the row.
      qual=
      [[ $bin == model_faults ]] && qual="model only"
      [[ ${m_note[$r]} =~ ^(model\ only,\ )?partial ]] && qual+="${qual:+, }partial"
      if [[ $rowres == pass ]]; then
        passed=$((passed + 1))
        [[ $bin == model_faults ]] && model=$((model + 1))
        [[ $qual == *partial ]] && part=$((part + 1))
        rowres+="${qual:+ ($qual)}"
      else
        failed=$((failed + 1))
      fi
    fi
    lines+=("| $r | $(md_cell "${m_exp[$r]}") | $rowres | $dur | ${m_inv[$r]} | $(evidence_of "$bin") | ${m_ci[$r]} | $(md_cell "$testcell") | $(md_cell "${m_note[$r]}") |")
  done

  # The whole matrix's coverage, whatever rows ran.
  local m_rows=${#all[@]} m_model=0 m_none=0 m_partial=0
  for r in "${all[@]}"; do
    case ${m_bin[$r]} in
      -) m_none=$((m_none + 1)) ;;
      model_faults) m_model=$((m_model + 1)) ;;
      *) [[ ${m_note[$r]} == partial* ]] && m_partial=$((m_partial + 1)) ;;
    esac
  done

  local commit dirty ceph_v out=${FAULTS_OUT:-$REPO/FAULTS.md} tmp
  commit=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
  dirty=$(git -C "$REPO" status --porcelain -- . ':!FAULTS.md' ':!FAULTS-CI.md' 2>/dev/null | head -1)
  ceph_v=$(ceph --version 2>/dev/null || echo "unknown: ceph --version failed")
  tmp=$(mktemp)
  {
    echo "# Fault matrix: last run"
    echo
    echo "Written by \`tests/lab/lab ${FAULTS_CMD:-faults${*:+ $*}}\` (tests/lab/lib/matrix.sh) from"
    echo "\`tests/lab/faults-matrix.tsv\`, which maps each row of faults.md to the test that"
    echo "asserts its expected outcome. Not edited by hand: run the command again."
    echo
    if ((partial)); then
      echo "**Partial run: rows ${rows[*]}.** The whole matrix: \`tests/lab/lab faults\`."
    else
      echo "Full run: every row of the matrix; the rows without a test say what is missing."
    fi
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| date (UTC) | $started |"
    echo "| commit | \`$commit\`${dirty:+ (the work tree had uncommitted changes)} |"
    echo "| Kubernetes (kube-apiserver, kube-controller-manager) | $KUBERNETES_VERSION |"
    echo "| etcd | $ETCD_VERSION |"
    echo "| Tekton Pipelines | $TEKTON_PIPELINE_VERSION (legacy Run CRD: $TEKTON_LEGACY_VERSION) |"
    echo "| Ceph | $ceph_v |"
    echo "| total duration | $(fmt_secs "$t_total") (lab up $(fmt_secs "$t_up"), build $(fmt_secs "$t_build"), tests $(fmt_secs $((t_total - t_up - t_build)))) |"
    echo "| rows run | ${#rows[@]}: $passed passed ($model of them on the model only, $part partial), $failed failed, $uncovered not covered |"
    echo "| the whole matrix | $m_rows rows: $((m_rows - m_model - m_none)) with a lab test ($m_partial of them partial), $m_model on the model only, $m_none not covered |"
    echo
    echo "Each distinct test ran once (\`cargo test --locked --test <binary> -- --exact <test>\`,"
    echo "with the row's environment); a test that covers several rows counts its time in each."
    echo "*Evidence* says what a pass proves: tests/model_faults.rs is a simulation of Ceph, not"
    echo "lab evidence; tests/conformance.rs runs the step executor on the lab's real Ceph"
    echo "without the controller process. *CI*: whether plain \`cargo test\` already runs the"
    echo "test. A note starting with \"partial\" names what the test does not assert."
    echo
    echo "| row | fault × moment: expected (faults.md) | result | duration | invariants checked | evidence | CI | test | note |"
    echo "|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${lines[@]}"
    if ((${#failures[@]})); then
      echo
      echo "## Failed"
      echo
      for f in "${failures[@]}"; do echo "- $(md_cell "$f")"; done
    fi
  } >"$tmp"
  chmod 644 "$tmp"
  mv "$tmp" "$out"
  log "wrote $out: $passed passed, $failed failed, $uncovered not covered in $(fmt_secs "$t_total")"
  ((failed == 0))
}
