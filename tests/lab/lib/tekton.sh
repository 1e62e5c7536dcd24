# shellcheck shell=bash
# The Tekton Pipelines controller, out of cluster. Sourced by tests/lab/lab.

tekton_up() {
  local cfg=$LAB_DIR/tekton f
  if ! [[ -f $cfg/applied ]]; then
    mkdir -p "$cfg"
    # Task/Pipeline CRDs name Tekton's conversion webhook, which does not run in
    # the lab: serve them with strategy None (objects are written at v1).
    for f in "$TEKTON_DIR"/config/300-crds/*.yaml; do
      python3 - "$f" >"$cfg/$(basename "$f")" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    if d.get("kind") == "CustomResourceDefinition":
        d["spec"].pop("conversion", None)
print(yaml.safe_dump_all(docs))
PY
    done
    kctl apply --server-side -f "$cfg" >/dev/null
    kctl create namespace tekton-pipelines --dry-run=client -o yaml | kctl apply -f - >/dev/null
    for f in "$TEKTON_DIR"/config/config-*.yaml; do kctl apply -f "$f" >/dev/null; done
    # The legacy v1alpha1 Run CRD (removed from Tekton in v0.47) for the Run tests.
    local run_crd=$LAB_CACHE/tekton-$TEKTON_LEGACY_VERSION/config/300-run.yaml
    [[ -f $run_crd ]] && kctl apply --server-side -f "$run_crd" >/dev/null
    for c in customruns pipelineruns tasks pipelines; do
      wait_for 30 "CRD $c established" kctl wait --for condition=Established "crd/$c.tekton.dev" --timeout 1s
    done
    touch "$cfg/applied"
  fi
  local img=lab.invalid/unused
  SYSTEM_NAMESPACE=tekton-pipelines KUBERNETES_MIN_VERSION=v1.28.0 \
    CONFIG_LEADERELECTION_NAME=config-leader-election-controller METRICS_DOMAIN=tekton.dev/pipeline \
    PROBES_PORT=$TEKTON_PROBES_PORT PROFILING_PORT=18008 METRICS_PROMETHEUS_PORT=19090 \
    start_daemon tekton-controller "$LAB_DIR" "$TEKTON_BIN" -kubeconfig "$LAB_DIR/kube/kubeconfig" -disable-ha \
    -entrypoint-image $img -nop-image $img -sidecarlogresults-image $img -workingdirinit-image $img \
    -shell-image $img -shell-image-win $img
  wait_for 60 "Tekton controller readiness" tekton_ready
}

tekton_ready() {
  alive tekton-controller && curl -fsS "http://127.0.0.1:$TEKTON_PROBES_PORT/readiness" >/dev/null 2>&1 ||
    { alive tekton-controller && grep -q 'Starting controllers' "$LOGS/tekton-controller.out"; }
}
