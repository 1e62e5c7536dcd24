# shellcheck shell=bash
# The commands that bring the lab up and run something on it: demo, bench,
# test. Sourced by tests/lab/lab.

controller_up() {
  (cd "$REPO" && cargo build --quiet --locked) || die "cargo build failed"
  mkdir -p "$LAB_DIR/controller-tmp/demo"
  # The lab's client (LAB_CLIENT), as `lab env` gives it to the tests.
  KUBECONFIG=$LAB_DIR/kube/kubeconfig RUST_LOG=info \
    RBD_BINARY=$LAB_DIR/client/bin/rbd CEPH_BINARY=$LAB_DIR/client/bin/ceph \
    start_daemon rbd-mirror-step-controller "$LAB_DIR" "$REPO/target/debug/rbd-mirror-step" run \
    --tmp-dir "$LAB_DIR/controller-tmp/demo" --health-addr 127.0.0.1:18081 \
    --label-selector '!rbdmirror.dev/test'   # the test suite's runs have controllers of their own
  wait_for 30 "the RbdMirrorStep controller" curl -fsS http://127.0.0.1:18081/readyz
}

demo_secret() {
  local ns=$1 site=$2 n=${2#site-}
  kctl -n "$ns" create secret generic "$site" \
    --from-file=ceph.conf="$LAB_DIR/ceph/$n/client/ceph.conf" \
    --from-file=keyring="$LAB_DIR/ceph/$n/client/keyring" --from-literal=userID=rbdstep >/dev/null
  kctl -n "$ns" label secret "$site" rbdmirror.dev/ceph-connection=true >/dev/null
}

demo_replaying() {
  [[ $(on_site "$1" rbd mirror image status "$POOL/$2" --format json 2>/dev/null | jq -r .state) == up+replaying ]]
}

demo_done() {
  local s
  s=$(kctl -n "$1" get pipelinerun "$2" -o jsonpath='{.status.conditions[0].status}' 2>/dev/null)
  [[ $s == True || $s == False ]]
}

demo_role() {
  local role st
  role=$(on_site "$1" rbd info "$POOL/$2" --format json 2>/dev/null | jq -r 'if .mirroring.primary then "primary" else "non-primary" end')
  st=$(on_site "$1" rbd mirror image status "$POOL/$2" --format json 2>/dev/null | jq -r .state)
  echo "$role $st"
}

demo_pipelinerun() {
  local ns=$1 name=$2 from=$3 to=$4 list=$5
  kctl -n "$ns" create -f - >/dev/null <<EOF
apiVersion: tekton.dev/v1
kind: PipelineRun
metadata: {name: $name}
spec:
  pipelineRef: {name: planned-failover}
  params:
    - {name: pool, value: $POOL}
    - {name: images, value: [$list]}
    - {name: from-cluster, value: $from}
    - {name: to-cluster, value: $to}
EOF
}

cmd_demo() {
  cmd_up
  controller_up
  local ts ns imgs=() list i
  ts=$(date +%s); ns=demo-$ts
  log "namespace $ns: Secrets site-a and site-b, the Role its runs need, the pipelines of tekton/"
  kctl create namespace "$ns" >/dev/null
  demo_secret "$ns" site-a; demo_secret "$ns" site-b
  kctl -n "$ns" create role ceph-connections --verb=get --resource=secrets --resource-name=site-a --resource-name=site-b >/dev/null
  kctl -n "$ns" create rolebinding ceph-connections --role=ceph-connections --serviceaccount="$ns:default" >/dev/null
  kctl apply --server-side --force-conflicts -f "$REPO/config/crd/rbdmirrorstep.yaml" >/dev/null
  kctl -n "$ns" apply -f "$REPO/tekton/" >/dev/null
  log "three snapshot-mirrored images with data on site-a"
  for i in 1 2 3; do
    imgs+=("demo-$ts-$i")
    on_site a rbd create --size 32M "$POOL/demo-$ts-$i"
    on_site a rbd bench --io-type write --io-size 64K --io-total 4M "$POOL/demo-$ts-$i" >/dev/null
    on_site a rbd mirror image enable "$POOL/demo-$ts-$i" snapshot >/dev/null
  done
  for img in "${imgs[@]}"; do
    wait_for 120 "$img replaying on site-b" demo_replaying b "$img"
  done
  list=$(IFS=,; echo "${imgs[*]}")
  log "planned-failover site-a -> site-b"
  local t0=$SECONDS
  demo_pipelinerun "$ns" failover site-a site-b "$list"
  wait_for 600 "the PipelineRun to finish" demo_done "$ns" failover
  local secs=$((SECONDS - t0))
  echo
  echo "planned-failover: $(kctl -n "$ns" get pipelinerun failover -o jsonpath='{.status.conditions[0].reason}') in ${secs}s (PipelineRun created -> finished)"
  echo
  printf '%-16s %-11s %-9s %s\n' STEP RESULT DURATION OUTCOMES
  kctl -n "$ns" get customruns -o json | jq -r '
    .items | sort_by(.status.startTime) | .[] |
    [ .metadata.labels["tekton.dev/pipelineTask"],
      .status.conditions[0].reason,
      ((.status.results // []) | map(select(.name == "duration")) | .[0].value // "-"),
      ((.status.results // []) | map(select(.name == "outcomes")) | (.[0].value // "{}") | fromjson
        | [to_entries[] | .value] | group_by(.) | map("\(length) \(.[0])") | join(", "))
    ] | @tsv' | while IFS=$'\t' read -r step res dur out; do
      printf '%-16s %-11s %-9s %s\n' "$step" "$res" "$dur" "$out"
    done
  echo
  printf '%-32s %-26s %s\n' IMAGE SITE-A SITE-B
  for img in "${imgs[@]}"; do
    printf '%-32s %-26s %s\n' "$POOL/$img" "$(demo_role a "$img")" "$(demo_role b "$img")"
  done
  echo
  echo "Pipeline results:  kubectl --kubeconfig $LAB_DIR/kube/kubeconfig -n $ns get pipelinerun failover -o jsonpath='{.status.results}'"
  echo "Steps:             kubectl --kubeconfig $LAB_DIR/kube/kubeconfig -n $ns get customruns"
  echo "Move back: a planned failover the other way (failback is for after an unplanned failover, when the"
  echo "returning site must be demoted and resynced); both pipelines are installed in $ns:"
  echo "  tkn -n $ns pipeline start planned-failover -p pool=$POOL -p images=$list -p from-cluster=site-b -p to-cluster=site-a --use-param-defaults"
  echo "  tkn -n $ns pipeline start failback -p pool=$POOL -p images=$list -p returning-cluster=site-a -p current-cluster=site-b --use-param-defaults"
}

cmd_bench() {
  cmd_up
  # shellcheck disable=SC1091
  source "$LAB_DIR/env"
  cd "$REPO"
  cargo bench --locked --bench failover
}

cmd_test() {
  cmd_up
  cmd_image
  # shellcheck disable=SC1091
  source "$LAB_DIR/env"
  cd "$REPO"
  cargo test --locked "$@"
}
