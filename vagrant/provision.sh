#!/usr/bin/env bash
# Provision the VM exactly as a fresh machine is set up: through the project's Makefile.
set -euo pipefail
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq make rsync >/dev/null
cd /ebpflb
make setup
.venv/bin/ebpflb doctor || true
