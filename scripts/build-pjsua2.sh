#!/usr/bin/env bash
# Builds PJSUA2 (pjproject's SWIG Python module) from Debian's source archive
# with the server profile in scripts/pjsip/config_site.h, and installs it into
# .venv. The PyPI wheel is compiled for 4 calls per process; this build holds
# 1,000 (see docs/ARCHITECTURE.md).
#
# Where the source comes from: Debian's `asterisk` source package carries
# pjproject as its `orig-Xpjproject` component (pjproject 2.17 in unstable);
# scripts/debian-source.sh fetches it with apt, which checks it against the
# signed archive index. The built wheel is cached under .cache/pjsua2/<key>/,
# keyed by this script, the profile and the interpreter, so a second run
# installs it in seconds without the network.
#
# Usage: scripts/build-pjsua2.sh [--force]
# Exit 0: installed. Exit 3: no usable source (one line on stderr says why; the
# caller falls back to the PyPI wheel). Any other failure is a build error.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

force=0
[ "${1:-}" = "--force" ] && force=1
python=$root/.venv/bin/python
[ -x "$python" ] || { echo "build-pjsua2: $python missing: create the venv first" >&2; exit 1; }

MIN_VERSION=2.15
CONFIGURE_FLAGS=(--enable-epoll --disable-video --disable-sound --disable-libsrtp --disable-speex-codec
  --disable-speex-aec --disable-gsm-codec --disable-ilbc-codec --disable-g722-codec --disable-g7221-codec
  --disable-l16-codec --disable-resample --disable-libyuv --disable-libwebrtc --disable-opencore-amr
  --disable-silk --disable-opus --disable-bcg729 --disable-v4l2 --disable-ffmpeg --disable-openh264
  --disable-sdl --disable-upnp --disable-android-mediacodec)

key=$({ cat "$0" scripts/pjsip/config_site.h; "$python" -c 'import sys, sysconfig; print(sys.version, sysconfig.get_platform())'; } \
      | sha256sum | cut -c1-16)
cache=$root/.cache/pjsua2
out=$cache/$key
log=$out/build.log

install_wheel() {
  local wheel=$1
  # The wheel and this build both provide the `pjsua2` module: only one may be installed.
  "$python" -m pip uninstall -q -y pjsua2-python >/dev/null 2>&1 || true
  "$python" -m pip install -q --force-reinstall --no-deps "$wheel"
  # The library logs its start-up on stdout before any log setting applies.
  "$python" - <<'EOF' | grep '^build-pjsua2:'
import ctypes, pjsua2
ep = pjsua2.Endpoint()
ep.libCreate()
cfg = pjsua2.EpConfig()
cfg.uaConfig.maxCalls = 100000
cfg.logConfig.level = cfg.logConfig.consoleLevel = 0
ep.libInit(cfg)
cap = ctypes.CDLL(pjsua2._pjsua2.__file__).pjsua_call_get_max_count()
version = ep.libVersion().full
ep.libDestroy()
print(f"build-pjsua2: installed pjsua2 {version}, {cap} calls per process")
EOF
}

wheel=$(ls "$out"/pjsua2-*.whl 2>/dev/null | head -n1 || true)
if [ -n "$wheel" ] && [ $force = 0 ]; then
  # pip remembers where an installed wheel came from: this cache entry, or not.
  from=$("$python" -c 'import importlib.metadata as m; print(m.distribution("pjsua2").read_text("direct_url.json") or "")' 2>/dev/null || true)
  if [[ "$from" == *"/.cache/pjsua2/$key/"* ]]; then
    echo "build-pjsua2: pjsua2 of build $key already installed"
  else
    install_wheel "$wheel"
  fi
  exit 0
fi

rm -rf "$out"
mkdir -p "$out"
started=$(date +%s)
{
  echo "build $key started $(date -u +%FT%TZ) on $(uname -m), $(nproc) cores"
  echo "python: $("$python" -c 'import sys; print(sys.version.split()[0])')"
} > "$log"

# 1. Source, fetched and verified by apt.
src=$cache/source
rm -rf "$src"
if ! fetched=$(scripts/debian-source.sh asterisk "$src" 2>"$out/fetch.err"); then
  echo "build-pjsua2: pjproject source not available from Debian's archive ($(tail -n1 "$out/fetch.err"))" >&2
  exit 3
fi
printf '%s\n' "$fetched" | sed 's/^/source asterisk: /' >> "$log"
tarball=$(ls "$src"/asterisk_*.orig-Xpjproject.tar.* 2>/dev/null | head -n1 || true)
if [ -z "$tarball" ]; then
  echo "build-pjsua2: Debian's asterisk source has no pjproject component" >&2
  exit 3
fi
echo "pjproject tarball: $(basename "$tarball") sha256 $(sha256sum "$tarball" | cut -d' ' -f1)" >> "$log"
tree=$out/tree
mkdir -p "$tree"
tar -xf "$tarball" -C "$tree" --strip-components=1
version=$(awk -F':= *' '/^export PJ_VERSION_MAJOR/{maj=$2} /^export PJ_VERSION_MINOR/{min=$2} END{print maj"."min}' "$tree/version.mak")
echo "pjproject version: $version" >> "$log"
if ! printf '%s\n%s\n' "$MIN_VERSION" "$version" | sort -V -C; then
  echo "build-pjsua2: Debian's pjproject is $version, older than $MIN_VERSION (call-churn fixes)" >&2
  exit 3
fi

# 2. pjproject with the server profile.
cp scripts/pjsip/config_site.h "$tree/pjlib/include/pj/config_site.h"
echo "config_site.h sha256 $(sha256sum scripts/pjsip/config_site.h | cut -d' ' -f1)" >> "$log"
# pjlib's files are stdio streams: without this, a WAV writer's flushes would sit
# in a 4 KiB stdio buffer too, and a killed worker would lose that much more of
# every tape. Unbuffered, PJMEDIA_FILE_PORT_BUFSIZE (60 ms) is the only buffer.
file_io=$tree/pjlib/src/pj/file_io_ansi.c
sed -i 's|^\(    \*fd = fopen(pathname, mode);\)$|\1\n    if (*fd != NULL) setvbuf((FILE*)*fd, NULL, _IONBF, 0);|' "$file_io"
grep -q '_IONBF' "$file_io" || { echo "build-pjsua2: cannot make pjlib's files unbuffered" >&2; exit 1; }
echo "patched: pjlib files unbuffered (setvbuf _IONBF in pj_file_open)" >> "$log"
# Debian's repack removed the BDSound device source, which the makefile still
# lists; disabled, it compiles to nothing, so an empty file stands in.
[ -f "$tree/pjmedia/src/pjmedia-audiodev/bdimad_dev.c" ] || : > "$tree/pjmedia/src/pjmedia-audiodev/bdimad_dev.c"
echo "configure ${CONFIGURE_FLAGS[*]}" >> "$log"
jobs=$(nproc)
(
  cd "$tree"
  export CFLAGS="-O2 -fPIC" CXXFLAGS="-O2 -fPIC"
  ./configure "${CONFIGURE_FLAGS[@]}"
  make dep
  make -j"$jobs" lib
) >> "$out/make.log" 2>&1 || { echo "build-pjsua2: pjproject build failed; see $out/make.log" >&2; exit 1; }
echo "libraries built in $(( $(date +%s) - started )) s" >> "$log"

# 3. The SWIG module, as a wheel built by the venv's interpreter.
"$python" -m pip install -q setuptools wheel
(
  cd "$tree/pjsip-apps/src/swig/python"
  make PYTHON_EXE="$python" pjsua2_wrap.cpp
  # setup.py reads the compiler flags of the build above through helper.mak.
  MAKE=make "$python" setup.py -q bdist_wheel --dist-dir "$out"
) >> "$out/make.log" 2>&1 || { echo "build-pjsua2: SWIG module build failed; see $out/make.log" >&2; exit 1; }
wheel=$(ls "$out"/pjsua2-*.whl | head -n1)
echo "wheel: $(basename "$wheel") sha256 $(sha256sum "$wheel" | cut -d' ' -f1)" >> "$log"
echo "built in $(( $(date +%s) - started )) s" >> "$log"
rm -rf "$tree" "$src"
install_wheel "$wheel" | tee -a "$log"
