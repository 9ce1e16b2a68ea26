# ebpflb: every target sets up what it needs first (idempotent, quiet when done):
# run, test and bench the whole machine (as root: Debian packages, kernel headers,
# bpffs, the venv); lint and unit only the venv, so they need no root on a machine
# that is set up (scripts/setup.sh venv says what to run as root when it is not).
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup venv run test lint unit bench clean

setup:
	@bash scripts/setup.sh

venv:
	@bash scripts/setup.sh venv

## run: the lab with the example manifests, traffic balanced across backends, the CLI.
run: setup
	@$(PY) -m ebpflb.lab.demo

## test: lint, types, and every test (unit, BPF prog-test-run, lab with real traffic).
test: setup lint
	@$(PY) -m pytest -q -p no:cacheprovider

lint: venv
	@$(VENV)/bin/ruff check --no-cache ebpflb tests bench
	@$(VENV)/bin/ruff format --check --no-cache ebpflb tests bench
	@$(VENV)/bin/mypy --no-incremental --cache-dir=/dev/null

## unit: the tests that need no root (EBPFLB_TESTS_NO_ROOT=1: any root test among them
## is deselected, and counted in the summary, instead of failing the run).
unit: venv
	@EBPFLB_TESTS_NO_ROOT=1 $(PY) -m pytest -q -p no:cacheprovider tests/unit

## bench: the data path (direct vs ebpflb vs kube-proxy-shaped iptables, 10..10,000
## Services), the control plane (full sync, event-to-map latency, RSS vs iptables-restore),
## the userspace path (vs bpf vs direct, with iperf3 bulk throughput), the ClusterIP
## path on each node shape (routed, bridge) and the cost of a /metrics scrape at
## 10,000 Services (vs `ebpflb stats --json`), and requests lost under faults (agent
## killed, stopped or paused, backend churn, scale to zero, a bad edit, 20,000 Services),
## traffic from outside (XDP vs tc vs iptables), socket-LB vs tc for pods, the tc
## program's per-packet cost up to 100,000 Services (and against issue 15's baseline
## program, timed alternately with it), what its two cold conntrack buckets cost
## (bench.ctmemory) and the Maglev full sync.
bench: setup
	@$(PY) -m bench.datapath
	@$(PY) -m bench.controlplane
	@$(PY) -m bench.controlplane --lb-algorithm maglev --scales 10000
	@$(PY) -m bench.testrun --scales 10,10000,100000
	@$(PY) -m bench.testrun_baseline
	@$(PY) -m bench.ctmemory
	@$(PY) -m bench.userspace
	@$(PY) -m bench.nodeshapes
	@$(PY) -m bench.metrics
	@$(PY) -m bench.faults
	@$(PY) -m bench.xdp
	@$(PY) -m bench.socklb --scales 10,1000,10000,100000

clean:
	@$(PY) -m ebpflb lab down --name ebpflb 2>/dev/null || true
	rm -rf $(VENV) build *.egg-info
