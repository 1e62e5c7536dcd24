# shellcheck shell=bash
# Kubernetes: certificates, etcd, kube-apiserver, kube-controller-manager.
# Sourced by tests/lab/lab.

mk_certs() {
  local d=$LAB_DIR/kube
  [[ -f $d/ca.crt ]] && return 0
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=rbd-mirror-step-lab-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout "$d/apiserver.key" -out "$d/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:%s,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' "$LAB_IP" >"$d/san.ext"
  openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 3650 \
    -extfile "$d/san.ext" -out "$d/apiserver.crt" 2>/dev/null
  # Admin: a client certificate in system:masters, like envtest provisions.
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=lab-admin" -keyout "$d/admin.key" -out "$d/admin.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$d/client.ext"
  openssl x509 -req -in "$d/admin.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 3650 \
    -extfile "$d/client.ext" -out "$d/admin.crt" 2>/dev/null
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  chmod 600 "$d"/*.key
  cat >"$d/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $d/ca.crt
users:
- name: lab-admin
  user:
    client-certificate: $d/admin.crt
    client-key: $d/admin.key
contexts:
- name: lab
  context: {cluster: lab, user: lab-admin, namespace: default}
current-context: lab
EOF
}

kube_up() {
  local d=$LAB_DIR/kube
  mk_certs
  mkdir -p "$LAB_DIR/etcd"
  start_daemon etcd "$LAB_DIR" "$ETCD_BIN" --name lab --data-dir "$LAB_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "lab=http://127.0.0.1:$((ETCD_PORT + 1))" --unsafe-no-fsync --log-level warn
  wait_for 30 "etcd health" curl -fsS "http://127.0.0.1:$ETCD_PORT/health"
  start_daemon kube-apiserver "$LAB_DIR" "$APISERVER_BIN" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" --secure-port "$API_PORT" \
    --bind-address 0.0.0.0 --advertise-address "$LAB_IP" \
    --tls-cert-file "$d/apiserver.crt" --tls-private-key-file "$d/apiserver.key" --client-ca-file "$d/ca.crt" \
    --service-cluster-ip-range 10.0.0.0/24 --authorization-mode Node,RBAC --allow-privileged=true \
    --service-account-issuer "https://127.0.0.1:$API_PORT" --service-account-key-file "$d/sa.pub" \
    --service-account-signing-key-file "$d/sa.key" --api-audiences "https://127.0.0.1:$API_PORT"
  wait_for 120 "kube-apiserver /readyz" kctl get --raw /readyz
}

kctl() { kubectl --kubeconfig "$LAB_DIR/kube/kubeconfig" "$@"; }

# mk_client_cert <name> <subject>: a client certificate of the lab CA and its
# kubeconfig, $LAB_DIR/kube/<name>.kubeconfig. Made apart from mk_certs so
# that a lab started before a part existed gets that part's identity too.
mk_client_cert() {
  local d=$LAB_DIR/kube name=$1 subj=$2
  [[ -f $d/$name.kubeconfig ]] && return 0
  openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$d/$name.key" -out "$d/$name.csr" 2>/dev/null
  openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 3650 \
    -extfile "$d/client.ext" -out "$d/$name.crt" 2>/dev/null
  chmod 600 "$d/$name.key"
  cat >"$d/$name.kubeconfig.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: $d/ca.crt}
users:
- name: $name
  user: {client-certificate: $d/$name.crt, client-key: $d/$name.key}
contexts:
- name: lab
  context: {cluster: lab, user: $name}
current-context: lab
EOF
  mv "$d/$name.kubeconfig.tmp" "$d/$name.kubeconfig"
}

# kube-controller-manager's identity: the user system:kube-controller-manager,
# which the apiserver's bootstrap RBAC binds to its ClusterRole (as kubeadm does).
mk_kcm_kubeconfig() { mk_client_cert kcm "/CN=system:kube-controller-manager"; }

# The controllers a cluster runs for what the lab does: garbage collection
# (owner references: a deleted PipelineRun takes its CustomRuns along), the
# PersistentVolume binder (PVCs bind to PVs as on a cluster), and for the
# node (lib/node.sh) Deployments, ReplicaSets, namespaces, ServiceAccounts
# with their tokens and the kube-root-ca.crt ConfigMap a Pod's token volume
# reads, the node lifecycle (it lifts the not-ready taint a new Node gets) and
# the aggregation of the built-in ClusterRoles. Each controller acts as its own ServiceAccount in kube-system
# (--use-service-account-credentials), with the bootstrap RBAC of a real
# cluster, instead of one identity that may do everything. It keeps no state
# of its own, so `lab up` starts it on a lab that runs without it.
KCM_CONTROLLERS=garbagecollector,persistentvolume-binder,deployment,replicaset,namespace,serviceaccount,serviceaccount-token,root-ca-cert-publisher,nodelifecycle,clusterrole-aggregation

kcm_up() {
  local d=$LAB_DIR/kube
  mk_kcm_kubeconfig
  start_daemon kube-controller-manager "$LAB_DIR" "$KCM_BIN" \
    --kubeconfig "$d/kcm.kubeconfig" --controllers "$KCM_CONTROLLERS" \
    --use-service-account-credentials --leader-elect=false \
    --root-ca-file "$d/ca.crt" --service-account-private-key-file "$d/sa.key" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --cert-dir "$d/kcm-serving"
  wait_for 60 "kube-controller-manager /healthz" kcm_healthy
}

# /healthz is served without authentication (--authorization-always-allow-paths).
kcm_healthy() { alive kube-controller-manager && curl -fsSk "https://127.0.0.1:$KCM_PORT/healthz"; }
