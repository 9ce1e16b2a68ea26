#!/usr/bin/env bash
# Provision one node of the cluster lab (run by vagrant as root, settings in the
# environment from the Vagrantfile): kernel headers for bcc, k3s without kube-proxy,
# the ebpflb image built here and imported into k3s's containerd; on the server, the
# DaemonSet and the check objects applied.
set -euo pipefail
: "${ROLE:?}" "${NODE_IP:?}" "${SERVER_IP:?}" "${TOKEN:?}"
LB_IP=${LB_IP:-}
IMAGE=docker.io/library/ebpflb:0.1.0
export DEBIAN_FRONTEND=noninteractive

apt-get update -qq
apt-get install -y -qq --no-install-recommends curl ca-certificates podman \
    "linux-headers-$(uname -r)" >/dev/null
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

iface=$(ip -o -4 addr show to "$NODE_IP" | awk '{print $2; exit}')
if [[ -z $iface ]]; then
    echo "provision: no interface holds $NODE_IP" >&2
    exit 1
fi
common=(--node-ip "$NODE_IP" --flannel-iface "$iface")
if [[ $ROLE == server ]]; then
    curl -sfL https://get.k3s.io | INSTALL_K3S_EXEC="server" K3S_TOKEN="$TOKEN" sh -s - \
        "${common[@]}" --disable-kube-proxy --disable servicelb --disable traefik \
        --flannel-backend vxlan --write-kubeconfig-mode 644
else
    for _ in $(seq 1 60); do  # the server may still be starting
        curl -ksf --max-time 2 "https://$SERVER_IP:6443/ping" >/dev/null && break
        sleep 5
    done
    curl -sfL https://get.k3s.io | INSTALL_K3S_EXEC="agent" K3S_TOKEN="$TOKEN" \
        K3S_URL="https://$SERVER_IP:6443" sh -s - "${common[@]}"
fi

# The image, on every node (no registry in the lab): built from the synced tree.
podman build -q -f /ebpflb/deploy/Containerfile -t "$IMAGE" /ebpflb
podman save "$IMAGE" | k3s ctr images import - >/dev/null

# The load-balancer IP: local to this node, so it answers ARP for it on eth1.
if [[ -n $LB_IP ]]; then
    ip addr replace "$LB_IP/32" dev lo
fi

if [[ $ROLE == server ]]; then
    for _ in $(seq 1 60); do
        k3s kubectl get --raw /readyz >/dev/null 2>&1 && break
        sleep 2
    done
    k3s kubectl apply -f /ebpflb/deploy/rbac.yaml -f /ebpflb/deploy/apiserver.yaml \
        -f /ebpflb/deploy/daemonset.yaml -f /ebpflb/vagrant/checks.yaml
fi
