#!/usr/bin/env bash
# Installs what the softswitch needs on a fresh Debian machine: the SIP front
# (Kamailio), SIPp, espeak-ng and sox from apt; Python packages into .venv.
# Usage: scripts/setup.sh          runtime only
#        scripts/setup.sh --test   runtime and test tools
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

packages=(kamailio sip-tester espeak-ng sox)
# The console's browser test drives headless Chromium through chromedriver.
[ "${1:-}" = "--test" ] && packages+=(chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The Debian package starts a system Kamailio on 5060; the softswitch runs its own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet kamailio 2>/dev/null; then
  as_root systemctl disable --now kamailio
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install -q -e '.[test]'
else
  .venv/bin/python -m pip install -q -e .
fi
echo "setup: done"
