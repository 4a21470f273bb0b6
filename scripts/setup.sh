#!/usr/bin/env bash
# Installs what the softswitch needs on a fresh Debian machine: the SIP front
# (Kamailio, with its PostgreSQL module), SIPp, espeak-ng and sox from apt (PostgreSQL too, for the tests);
# the media engine (PJSUA2 built from Debian's source archive with a server
# profile, scripts/build-pjsua2.sh) and the Python packages into .venv.
# Usage: scripts/setup.sh          runtime only
#        scripts/setup.sh --test   runtime and test tools
# Environment: SOFTSWITCH_ENGINE=wheel  use the PyPI wheel (4 calls per worker) instead of the build
#              VENV=DIR                 another virtual environment than .venv
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

engine=${SOFTSWITCH_ENGINE:-build}
case "$engine" in build|wheel) ;; *) echo "setup: SOFTSWITCH_ENGINE must be build or wheel" >&2; exit 2 ;; esac

# kamailio-postgres-modules: the fronts of several hosts keep registrations in a shared PostgreSQL.
packages=(kamailio kamailio-postgres-modules sip-tester espeak-ng sox)
# What building pjproject and its SWIG module takes.
[ "$engine" = build ] && packages+=(build-essential swig libssl-dev uuid-dev xz-utils)
# The console's browser test drives headless Chromium through chromedriver; the storage
# tests start their own PostgreSQL servers from Debian's binaries.
[ "${1:-}" = "--test" ] && packages+=(chromium chromium-driver postgresql)
scripts/apt-install.sh "${packages[@]}"
# The Debian packages start a system Kamailio on 5060 and a PostgreSQL on 5432; the
# softswitch runs its own Kamailio, the tests their own PostgreSQL.
for service in kamailio postgresql; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    as_root systemctl disable --now "$service"
  fi
done
if command -v pg_lsclusters >/dev/null 2>&1; then  # without systemd the package starts its cluster itself
  pg_lsclusters -h | while read -r version cluster _port status _rest; do
    if [ "$status" = online ]; then as_root pg_ctlcluster "$version" "$cluster" stop; fi
  done
fi

venv=${VENV:-.venv}
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip

extras=()
[ "${1:-}" = "--test" ] && extras+=(test)
if [ "$engine" = build ]; then
  [ "$venv" = .venv ] || { echo "setup: the engine build installs into .venv; use SOFTSWITCH_ENGINE=wheel with VENV" >&2; exit 2; }
  set +e
  scripts/build-pjsua2.sh
  built=$?
  set -e
  case $built in
    0) ;;
    3) echo "setup: falling back to the PyPI wheel pjsua2-python: 4 calls per media worker"; engine=wheel ;;
    *) exit $built ;;
  esac
fi
if [ "$engine" = wheel ]; then
  # The build and the wheel both provide the `pjsua2` module: only one may be installed.
  "$venv/bin/python" -m pip uninstall -q -y pjsua2 >/dev/null 2>&1 || true
  extras+=(engine-wheel)
fi
spec=.
[ ${#extras[@]} -gt 0 ] && spec=".[$(IFS=,; echo "${extras[*]}")]"
"$venv/bin/python" -m pip install -q -e "$spec"
echo "setup: done ($("$venv/bin/python" -m softswitch.worker.engine 2>/dev/null | tail -n1))"
