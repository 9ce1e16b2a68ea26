#!/usr/bin/env bash
# From the host, after `vagrant up`: wait for ebpflb on every node, give the check
# Service its load-balancer IP, and run the cluster checks of ebpflb/lab/checks.py
# (the same ones `make test` runs on the netns lab, plus cluster DNS and
# kubernetes.default) through kubectl. Needs kubectl and python3 on the host.
set -euo pipefail
cd "$(dirname "$0")"
LB_IP=192.168.56.240
SERVER_IP=192.168.56.10
WAIT=${WAIT:-300}  # seconds for the cluster to settle

command -v kubectl >/dev/null || { echo "smoke: kubectl is needed on the host" >&2; exit 1; }
kubeconfig=$(mktemp)
trap 'rm -f "$kubeconfig"' EXIT
vagrant ssh cp -c 'sudo cat /etc/rancher/k3s/k3s.yaml' 2>/dev/null \
    | sed "s/127.0.0.1/$SERVER_IP/" >"$kubeconfig"
export KUBECONFIG=$kubeconfig

kubectl -n kube-system rollout status daemonset/ebpflb --timeout="${WAIT}s"
kubectl -n ebpflb-checks rollout status deployment/echo --timeout="${WAIT}s"
kubectl -n ebpflb-checks rollout status daemonset/checks-client --timeout="${WAIT}s"
kubectl -n ebpflb-checks patch service echo --subresource=status --type=merge \
    -p "{\"status\":{\"loadBalancer\":{\"ingress\":[{\"ip\":\"$LB_IP\"}]}}}" >/dev/null

for node in cp worker-1 worker-2; do
    echo "== ebpflb services on $node"
    pod=$(kubectl -n kube-system get pods -l k8s-app=ebpflb \
          --field-selector "spec.nodeName=$node" -o jsonpath='{.items[0].metadata.name}')
    kubectl -n kube-system exec "$pod" -c agent -- ebpflb services
done

cd ..
PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} exec python3 -m ebpflb.lab.checks cluster \
    --nodes worker-1,worker-2 --wait 120
