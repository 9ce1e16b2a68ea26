#!/usr/bin/env bash
# One-shot, idempotent set-up of a fresh Debian 12 machine for ebpflb, in two parts:
#   scripts/setup.sh system   Debian packages, kernel headers for bcc, bpffs (needs root)
#   scripts/setup.sh venv     the project's virtualenv: needs no root once the Debian
#                             packages are installed (as root, it installs them first)
#   scripts/setup.sh          both (make setup, make test, make run)
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:-all}
case "$part" in
    all | system | venv) ;;
    *) echo "usage: $0 [all|system|venv]" >&2; exit 2 ;;
esac

# Debian's kernel flavour for this architecture: its linux-headers-FLAVOUR package
# installs /usr/src/linux-headers-VERSION-FLAVOUR (plus -VERSION-common), which bcc
# compiles against when the running kernel ships no headers of its own.
arch=$(dpkg --print-architecture)
case "$arch" in
    armhf) flavour=armmp ;;
    i386) flavour=686-pae ;;
    ppc64el) flavour=powerpc64le ;;
    *) flavour=$arch ;;  # amd64, arm64, s390x, riscv64: the flavour is the arch's name
esac

PKGS=(python3-bpfcc libbpfcc "linux-headers-$flavour" iproute2 iptables iputils-ping gcc make
      python3-venv python3-dev  # python3-dev: Python.h, for ebpflb's native modules (setup.py)
      iperf3 nftables util-linux ethtool  # ethtool: XDP lab tests (tx csum off)
      vagrant shellcheck)  # make test: `vagrant validate` of vagrant/, shellcheck of scripts
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})) && [[ $part == venv && $(id -u) != 0 ]]; then
    # The venv needs python3-venv and python3-bpfcc, and the unit tests run ip,
    # vagrant and shellcheck, which only root can install.
    echo "setup: missing Debian packages: ${missing[*]}" >&2
    echo "setup: as root, run once: make setup   (or: apt-get install ${missing[*]})" >&2
    exit 1
fi
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bcc compiles at load time against /lib/modules/$(uname -r)/build. When the running
# kernel ships no headers (a custom or cloud kernel), link the Debian ones: tc/XDP
# programs only use UAPI-stable headers, so a nearby version is enough: the newest
# tree of this flavour (not the cloud-/rt- variants, whose common tree is named
# differently) and the common tree of the same version.
kdir="/lib/modules/$(uname -r)"
if [[ $part != venv && ! -e "$kdir/build/include" ]]; then
    hdr=$(find /usr/src -maxdepth 1 -type d -regextype posix-extended \
              -regex "/usr/src/linux-headers-[0-9.]+-[0-9]+-$flavour" | sort -V | tail -1)
    common="${hdr%-"$flavour"}-common"
    if [[ -z "$hdr" || ! -d "$hdr" || ! -d "$common" ]]; then
        echo "setup: no linux-headers-*-$flavour tree under /usr/src ($arch);" \
             "install linux-headers-$flavour" >&2
        exit 1
    fi
    echo "setup: linking $hdr into $kdir (running kernel has no headers)"
    mkdir -p "$kdir"
    ln -sfn "$hdr" "$kdir/build"
    ln -sfn "$common" "$kdir/source"
fi

if [[ $part != venv ]] && ! mountpoint -q /sys/fs/bpf; then
    mount -t bpf bpf /sys/fs/bpf
fi
[[ $part == system ]] && exit 0

# The venv is made from Debian's python so that bcc (python3-bpfcc) is importable.
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c "import bcc" 2>/dev/null; then
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]] && [[ ! -w .venv ]]; then
    echo "setup: .venv is out of date (pyproject.toml changed) and not writable by" \
         "$(id -un); as its owner ($(stat -c %U .venv)), run: make setup" >&2
    exit 1
fi
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    echo "setup: installing ebpflb into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 \
        | { grep -v -e 'is ignored: it is neither' -e 'BuildBackendWarning' -e '^ *[!*]*$' \
            -e 'Please be careful' -e 'name as your package' -e 'with strategy' || true; }
    touch "$stamp"
fi
