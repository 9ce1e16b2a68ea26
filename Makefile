# ebpflb: every target sets the machine up first (idempotent, quiet when done).
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup run test lint unit bench clean

setup:
	@bash scripts/setup.sh

## run: the lab with the example manifests, traffic balanced across backends, the CLI.
run: setup
	@$(PY) -m ebpflb.lab.demo

## test: lint, types, and every test (unit, BPF prog-test-run, lab with real traffic).
test: setup lint
	@$(PY) -m pytest -q -p no:cacheprovider

lint: setup
	@$(VENV)/bin/ruff check --no-cache ebpflb tests bench
	@$(VENV)/bin/mypy --no-incremental --cache-dir=/dev/null

unit: setup
	@$(PY) -m pytest -q -p no:cacheprovider tests/unit

## bench: the data path (direct vs ebpflb vs kube-proxy-shaped iptables, 10..10,000
## Services), the control plane (full sync, event-to-map latency, RSS vs iptables-restore),
## the userspace path (vs bpf vs direct, with iperf3 bulk throughput), the ClusterIP
## path on each node shape (routed, bridge) and the cost of a /metrics scrape at
## 10,000 Services (vs `ebpflb stats --json`).
bench: setup
	@$(PY) -m bench.datapath
	@$(PY) -m bench.controlplane
	@$(PY) -m bench.userspace
	@$(PY) -m bench.nodeshapes
	@$(PY) -m bench.metrics

clean:
	@$(PY) -m ebpflb lab down --name ebpflb 2>/dev/null || true
	rm -rf $(VENV) build *.egg-info
