# shellcheck shell=bash
# The lab's node: containerd (Debian's, with runc) and a kubelet built from
# the same k8s.io/kubernetes module as the API server, a CNI bridge for the
# Pods, and kube-scheduler. Recipes: ../shared/kubelet-lab.md. Sourced by
# tests/lab/lab.
#
# Pods reach the API server and both Ceph sites at $LAB_IP, an address on
# the host's lo that `lab up` adds (lab_ip_up): a Pod's own loopback hides
# the host's 127.0.0.1.

NODE_DIR=$LAB_DIR/node
KUBELET_BIN=$LAB_CACHE/kubelet-$KUBERNETES_VERSION/bin/kubelet
SCHEDULER_BIN=$LAB_CACHE/kube-scheduler-$KUBERNETES_VERSION/bin/kube-scheduler
LAB_KUBECTL=$LAB_CACHE/kubectl-$KUBERNETES_VERSION/bin/kubectl
CONTAINERD_SOCK=$NODE_DIR/containerd.sock
CNI_BRIDGE=labcni0
NODE_NAME=$(hostname | tr '[:upper:]' '[:lower:]')
# Host paths kubelet or containerd create whatever their configuration says;
# `lab down` removes those that were not there before `lab up`.
NODE_HOST_PATHS=(/var/lib/kubelet /usr/libexec/kubernetes /var/log/containers /var/log/pods /run/containerd /var/lib/cni)
# The sysctls kubelet sets at start (it has no warn-only mode), restored at down.
NODE_SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops)

# A host name for LAB_IP, for tests that name a monitor by host name: one
# line in /etc/hosts, marked, taken out again at `lab down`.
LAB_HOSTS_LINE="$LAB_IP $LAB_HOSTNAME # rbd-mirror-step lab"

lab_ip_up() {
  ip -4 addr show dev lo | grep -q " $LAB_IP/" || ip addr add "$LAB_IP/32" dev lo
  grep -qxF "$LAB_HOSTS_LINE" /etc/hosts || echo "$LAB_HOSTS_LINE" >>/etc/hosts
}

lab_ip_down() {
  if ip -4 addr show dev lo | grep -q " $LAB_IP/"; then ip addr del "$LAB_IP/32" dev lo; fi
  # In place (sed -i would replace the file, which may be a bind mount).
  if grep -qxF "$LAB_HOSTS_LINE" /etc/hosts; then
    local rest
    rest=$(grep -vxF "$LAB_HOSTS_LINE" /etc/hosts)
    printf '%s\n' "$rest" >/etc/hosts
  fi
}

lctl() { "$LAB_KUBECTL" --kubeconfig "$LAB_DIR/kube/kubeconfig" "$@"; }
nctr() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

containerd_up() {
  local d=$NODE_DIR
  mkdir -p "$d/cni/net.d" "$d/containerd"
  # Written before containerd starts: containerd 1.6 does not pick up a file
  # moved into its CNI folder later, and a node without CNI is never Ready.
  cat >"$d/cni/net.d/10-lab.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "lab",
  "plugins": [
    {"type": "bridge", "bridge": "$CNI_BRIDGE", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$d/cni/ipam"}}
  ]
}
EOF
  cat >"$d/containerd/config.toml" <<EOF
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri.v1alpha2", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This sandbox's root lacks CAP_SYS_RESOURCE: runc cannot lower a
  # process's oom_score_adj below its own (0), and the Pod sandbox's -998
  # ended every Pod "failed to update /proc/self/oom_score_adj: Permission
  # denied". Containerd then clamps to its own value instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$d/cni/net.d"
EOF
  start_daemon containerd "$LAB_DIR" containerd --config "$d/containerd/config.toml"
  wait_for 30 "containerd" nctr version
}

kubelet_up() {
  local d=$NODE_DIR k=$LAB_DIR/kube
  mk_client_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
  mkdir -p "$d/kubelet" "$d/manifests" "$d/pod-logs"
  cat >"$d/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
failSwapOn: false
address: 127.0.0.1
port: $KUBELET_PORT
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
readOnlyPort: 0
# The lab API server has no kubelet client certificate: anonymous, allowed.
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}, x509: {clientCAFile: $k/ca.crt}}
authorization: {mode: AlwaysAllow}
# Else kubelet adds KUBE-FIREWALL chains to the host's iptables.
makeIPTablesUtilChains: false
staticPodPath: $d/manifests
podLogsDir: $d/pod-logs
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: ""
EOF
  start_daemon kubelet "$LAB_DIR" "$KUBELET_BIN" --config "$d/kubelet-config.yaml" \
    --kubeconfig "$k/kubelet.kubeconfig" --root-dir "$d/kubelet" --hostname-override "$NODE_NAME" \
    --node-ip "$LAB_IP"
  wait_for 60 "the node $NODE_NAME Ready" node_ready
}

node_ready() {
  [[ $(lctl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

scheduler_up() {
  mk_client_cert kube-scheduler "/CN=system:kube-scheduler"
  start_daemon kube-scheduler "$LAB_DIR" "$SCHEDULER_BIN" --kubeconfig "$LAB_DIR/kube/kube-scheduler.kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT"
  wait_for 60 "kube-scheduler /healthz" curl -fsSk "https://127.0.0.1:$SCHEDULER_PORT/healthz"
}

node_running() { alive kubelet && alive containerd; }

node_up() {
  node_running && return 0
  mkdir -p "$NODE_DIR"
  # What was there before: `lab down` leaves the host as it found it.
  local p s
  if [[ ! -f $NODE_DIR/host-before ]]; then
    for p in "${NODE_HOST_PATHS[@]}"; do [[ -e $p ]] && echo "path $p"; done >"$NODE_DIR/host-before.tmp"
    for s in "${NODE_SYSCTLS[@]}"; do echo "sysctl $s $(sysctl -n "$s")"; done >>"$NODE_DIR/host-before.tmp"
    mv "$NODE_DIR/host-before.tmp" "$NODE_DIR/host-before"
  fi
  containerd_up
  node_import_images
  scheduler_up
  kubelet_up
}

# The images the node runs, from buildah's store into containerd's (the CRI
# namespace k8s.io): pause always, the controller's if it has been built.
node_import_images() {
  local img f id
  for img in "$PAUSE_IMAGE" "$IMAGE_NAME"; do
    bah_has "$img" || continue
    id=$(bah images --noheading --no-trunc --format '{{.ID}}' "$img")
    [[ $(cat "$NODE_DIR/imported-${img//[\/:]/_}" 2>/dev/null) == "$id" ]] && continue
    f=$NODE_DIR/image.tar
    rm -f "$f"
    bah push --quiet "$img" "docker-archive:$f:$img" >/dev/null
    nctr images import "$f" >/dev/null
    rm -f "$f"
    echo "$id" >"$NODE_DIR/imported-${img//[\/:]/_}"
    # Pods of an installed Deployment keep the image they started with (the
    # tag is the same): roll them onto the new one, as a user's upgrade would.
    if [[ $img == "$IMAGE_NAME" ]] && lctl -n rbd-mirror-step get deployment rbd-mirror-step >/dev/null 2>&1; then
      log "the controller's image changed: rolling the installed Deployment onto it"
      lctl -n rbd-mirror-step rollout restart deployment/rbd-mirror-step >/dev/null
    fi
  done
}

node_down() {
  [[ -d $NODE_DIR ]] || return 0
  # Pods first, while containerd still runs them: kubelet leaves them running
  # when it stops, and containerd's shims outlive containerd.
  stop_daemon kubelet 10
  stop_daemon kube-scheduler 10
  if alive containerd; then
    local id
    for id in $(nctr tasks ls -q 2>/dev/null); do nctr tasks kill -s KILL "$id" >/dev/null 2>&1 || true; done
    for id in $(nctr tasks ls -q 2>/dev/null); do nctr tasks rm -f "$id" >/dev/null 2>&1 || true; done
  fi
  stop_daemon containerd 10
  # Shims whose containerd is gone (and their containers) would live on.
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null || true
  local m
  # The Pods' network namespaces (containerd's, named cni-*), the bridge.
  for m in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}'); do
    grep -q "^netns $m$" "$NODE_DIR/host-before" 2>/dev/null || ip netns del "$m" 2>/dev/null || true
  done
  ip link del "$CNI_BRIDGE" 2>/dev/null || true
  # libcni's cache of our Pods' results (its folder is not configurable in
  # containerd 1.6): the network "lab" and the loopbacks of its sandboxes.
  find /var/lib/cni/results -maxdepth 1 -type f \( -name 'lab-*' -o -name 'cni-loopback-*' \) \
    -newer "$NODE_DIR/host-before" -delete 2>/dev/null || true
  # Mounts under the node's folders: deepest first.
  # (grep finds none once everything is unmounted: not an error under pipefail)
  findmnt -rn -o TARGET | { grep -E "^($NODE_DIR|/run/containerd)(/|$)" || true; } | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  # Host state kubelet changed (as recorded before the node started).
  local kind a b
  if [[ -f $NODE_DIR/host-before ]]; then
    while read -r kind a b; do
      [[ $kind == sysctl ]] && sysctl -qw "$a=$b" >/dev/null 2>&1 || true
    done <"$NODE_DIR/host-before"
    for a in "${NODE_HOST_PATHS[@]}"; do
      grep -qx "path $a" "$NODE_DIR/host-before" || rm -rf "$a"
    done
  fi
  # The kubepods cgroups, in every hierarchy (cgroup v1 or v2), leaves first.
  { find /sys/fs/cgroup -depth -type d -path '*/kubepods*' 2>/dev/null || true; } |
    while read -r m; do rmdir "$m" 2>/dev/null || true; done
}
