#!/usr/bin/env bash
# Builds the benchmark's peer: Asterisk from Debian's source package, with the
# pjproject that Debian ships as a component tarball of that package, a minimal
# module set (what the 111 IVR dialplan in bench/asterisk/ uses), installed
# into a private prefix. A bench step, never a CI step.
#
# Usage: bench/asterisk/build.sh [--force]
#   .cache/asterisk/src      the Debian source package (scripts/debian-source.sh)
#   .cache/asterisk/build    the unpacked, patched tree it is built in
#   .cache/asterisk/install  the prefix (sbin/asterisk, lib/asterisk/modules)
#   .cache/asterisk/build.log  version and sha256 of every tarball, then the build output
# A second run with the install present and this recipe unchanged returns at once;
# --force rebuilds. Nothing is downloaded except the source package through apt:
# Asterisk's own download helpers are replaced by a command that refuses.
# Exit 3 when the source package cannot be had (one line on stderr says why).
set -euo pipefail

script=$(realpath "$0")
repo=$(cd "$(dirname "$script")/../.." && pwd)
cache=$repo/.cache/asterisk
src=$cache/src
build=$cache/build
prefix=$cache/install
log=$cache/build.log
stamp=$prefix/.build-stamp
force=0
[ "${1:-}" = "--force" ] && force=1

# Modules the dialplan and its configuration load (bench/asterisk/modules.conf):
# SIP (chan_pjsip and the res_pjsip modules it depends on, identify by IP, SDP/RTP;
# the digest authenticator only so that res_pjsip does not warn on every call that
# none is registered: the endpoint has no auth), RTP with RFC 4733, a timer so
# prompts play on when the caller sends no RTP, the applications of extensions.conf
# (app_stack: Gosub/Return; SayDigits is built in), G.711 and WAV/raw files.
modules=(
  chan_pjsip res_pjsip res_pjsip_session res_pjsip_pubsub res_pjsip_sdp_rtp
  res_pjsip_endpoint_identifier_ip res_pjsip_authenticator_digest res_pjproject
  res_sorcery_config res_sorcery_memory res_sorcery_astdb res_rtp_asterisk res_timing_timerfd
  app_playback app_read app_record app_stack app_verbose pbx_config
  codec_alaw codec_ulaw codec_a_mu format_wav format_pcm
)
# Every dialplan function whose dependencies this machine has (menuselect
# leaves out those it cannot build); modules.conf loads only the ones used.
# Two are left out because they pull in modules of their own (func_aes:
# res_crypto, func_periodic_hook: app_chanspy), and so are those two, which
# enabling the category has already selected as dependencies.
module_categories_enabled=(MENUSELECT_FUNCS)
modules_disabled=(func_aes func_periodic_hook res_crypto app_chanspy)
build_deps=(build-essential pkg-config bzip2 xz-utils patch dpkg-dev libjansson-dev libxml2-dev
            libsqlite3-dev libedit-dev uuid-dev libssl-dev libncurses-dev)
# Debian's patches this build needs, applied in the order of debian/patches/series:
# sounds are never downloaded, codec_ilbc (removed from the repack) is off, the
# bdimad audio driver (removed from the pjproject repack) is not compiled, build.h
# is reproducible. The AMR/MP3/Opus add-on patches are for modules not built here.
debian_patches=(1009_build_reproducibly.patch 2002_no_download_sounds.patch 2008_disable_ilbc.patch
                2014_pjproject_unbreak.patch)

fail() { echo "asterisk build: $*" >&2; exit 1; }

# The recipe's identity: this script and the files the tree is built from. A
# changed recipe rebuilds; an unchanged one with an install present does nothing.
script_sha=$(sha256sum "$script" | cut -d' ' -f1)
recipe() {
  echo "$script_sha"
  [ -d "$src" ] && (cd "$src" && ls -1 asterisk_* 2>/dev/null | sort)
}

if [ $force = 0 ] && [ -x "$prefix/sbin/asterisk" ] && [ -f "$stamp" ] && [ "$(recipe)" = "$(cat "$stamp")" ]; then
  echo "asterisk build: cached: $("$prefix/sbin/asterisk" -V) in $prefix"
  exit 0
fi

started=$(date +%s)
mkdir -p "$cache"
: > "$log"
say() { echo "$*" | tee -a "$log"; }

# 1. The source package: fetched once, then used from the cache (offline).
orig=$(ls "$src"/asterisk_*.orig.tar.xz 2>/dev/null | head -n1 || true)
if [ -z "$orig" ] || [ ! -f "$src/fetch.txt" ]; then
  say "asterisk build: fetching the Debian source package 'asterisk'"
  rm -rf "$src"
  if ! "$repo/scripts/debian-source.sh" asterisk "$src" > "$cache/fetch.txt.new" 2> "$cache/fetch.err"; then
    echo "asterisk build: the Asterisk source is not available: $(tail -n1 "$cache/fetch.err")" >&2
    exit 3
  fi
  mv "$cache/fetch.txt.new" "$src/fetch.txt"
  orig=$(ls "$src"/asterisk_*.orig.tar.xz 2>/dev/null | head -n1 || true)
  [ -n "$orig" ] || { echo "asterisk build: the Asterisk source is not available: no orig tarball fetched" >&2; exit 3; }
fi
pjtar=$(ls "$src"/asterisk_*.orig-Xpjproject.tar.xz 2>/dev/null | head -n1 || true)
debtar=$(ls "$src"/asterisk_*.debian.tar.xz 2>/dev/null | head -n1 || true)
dsc=$(ls "$src"/asterisk_*.dsc 2>/dev/null | head -n1 || true)
[ -n "$pjtar" ] && [ -n "$debtar" ] && [ -n "$dsc" ] \
  || { echo "asterisk build: the Asterisk source is not available: pjproject component, packaging or .dsc missing in $src" >&2; exit 3; }
# apt checked the files against the signed index when it fetched them; check the
# cached copies against the .dsc's sha256 list again, so a damaged cache is caught.
for f in "$orig" "$pjtar" "$debtar"; do
  want=$(awk -v n="$(basename "$f")" '/^Checksums-Sha256:/{s=1;next} /^[^ ]/{s=0} s && $3==n {print $1}' "$dsc")
  have=$(sha256sum "$f" | cut -d' ' -f1)
  [ -n "$want" ] && [ "$want" = "$have" ] || fail "$(basename "$f"): sha256 $have does not match the .dsc ($want); remove $src and retry"
done
grep -h '^version=' "$src/fetch.txt" | sed 's/^/debian source /' | tee -a "$log"
for f in "$src"/asterisk_*; do
  say "sha256 $(basename "$f")=$(sha256sum "$f" | cut -d' ' -f1)"
done

# 2. Build dependencies from the machine's own (bookworm) archive.
"$repo/scripts/apt-install.sh" "${build_deps[@]}" >> "$log" 2>&1 \
  || fail "installing the build dependencies ${build_deps[*]} failed (see $log)"

# 3. The tree, laid out as dpkg-source does: the pjproject component as Xpjproject/.
rm -rf "$build" "$prefix"
mkdir -p "$build"
tar -C "$build" -xf "$orig"
top=$(tar -tf "$orig" | awk -F/ 'NR == 1 {print $1}')
tree=$build/$top
mkdir -p "$tree/Xpjproject"
tar -C "$tree/Xpjproject" --strip-components=1 -xf "$pjtar"
tar -C "$tree" -xf "$debtar"
for p in "${debian_patches[@]}"; do
  [ -f "$tree/debian/patches/$p" ] || fail "Debian patch $p is not in this source package; update debian_patches in $script"
  say "asterisk build: applying debian/patches/$p"
  patch -d "$tree" -p1 --forward --quiet < "$tree/debian/patches/$p" >> "$log" 2>&1 || fail "patch $p failed (see $log)"
done

# 4. Bundled pjproject from the component, as debian/rules does: Asterisk's
# third-party build expects pjproject-<version>.tar.bz2 in its externals cache,
# checked against an md5 list; both are made from Xpjproject/. Asterisk's own
# pjproject patches are then applied by its build as usual.
pjver=$(sed -n 's/^PJPROJECT_VERSION=//p' "$tree/third-party/versions.mak")
[ -n "$pjver" ] || fail "no PJPROJECT_VERSION in third-party/versions.mak"
externals=$build/externals
mkdir -p "$externals/pjproject-$pjver"
cp -a "$tree/Xpjproject/." "$externals/pjproject-$pjver/"
(cd "$externals" && tar --sort=name --owner=0 --group=0 --numeric-owner -cjf "pjproject-$pjver.tar.bz2" "pjproject-$pjver" \
  && rm -rf "pjproject-$pjver" && md5sum "pjproject-$pjver.tar.bz2") > "$tree/third-party/pjproject/pjproject-$pjver.tar.bz2.md5"
say "asterisk build: bundled pjproject $pjver from $(basename "$pjtar") ($(tar -tf "$pjtar" | awk -F/ 'NR == 1 {print $1}'))"

# Any download Asterisk's build would attempt (pjproject, sounds) fails loudly instead.
nodl=$build/no-download
cat > "$nodl" <<'EOF'
#!/bin/sh
echo "asterisk build: refusing to download: $*" >&2
exit 1
EOF
chmod 755 "$nodl"

# 5. Configure and build with Debian's flags (debian/rules: hardening, -O3
# -fno-partial-inlining, Asterisk not touching them), no XML docs, no sounds.
cd "$tree"
export SOURCE_DATE_EPOCH
SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -l debian/changelog -STimestamp)
flags() { DEB_BUILD_MAINT_OPTIONS=hardening=+all DEB_CFLAGS_MAINT_STRIP=-O2 \
          DEB_CFLAGS_MAINT_APPEND="-O3 -fno-partial-inlining" dpkg-buildflags --get "$1"; }
cflags="$(flags CFLAGS) $(flags CPPFLAGS)"
# The rpath lets sbin/asterisk find libasteriskpj.so in the prefix without ldconfig.
ldflags="$(flags LDFLAGS) -Wl,--as-needed -Wl,-rpath,$prefix/lib"
buildflags=(AST_FORTIFY_SOURCE= DEBUG= OPTIMIZE= NOISY_BUILD=yes LDCONFIG=:)
say "asterisk build: configure (prefix $prefix)"
WGET=$nodl CURL=: FETCH=: CFLAGS="$cflags" LDFLAGS="$ldflags" \
  ./configure --prefix="$prefix" --with-pjproject-bundled --with-externals-cache="$externals" \
    --disable-xmldoc --disable-asteriskssl --without-pwlib --without-sdl >> "$log" 2>&1 \
  || fail "configure failed (see $log and $tree/config.log)"

make menuselect.makeopts BUILD_CFLAGS="$cflags" BUILD_LDFLAGS="$ldflags" >> "$log" 2>&1 || fail "menuselect failed (see $log)"
ms=menuselect/menuselect
# Every module category off (sounds, utilities, AGI samples, tests included); compiler
# flags and the channel storage backend keep their defaults except BUILD_NATIVE (as Debian).
for category in $(grep -o 'category name="[^"]*"' menuselect-tree | cut -d'"' -f2 | sort -u); do
  case $category in MENUSELECT_CFLAGS|MENUSELECT_CHANNELSTORAGE) continue ;; esac
  $ms --disable-category "$category" menuselect.makeopts >> "$log" 2>&1
done
$ms --disable BUILD_NATIVE menuselect.makeopts >> "$log" 2>&1
for category in "${module_categories_enabled[@]}"; do
  $ms --enable-category "$category" menuselect.makeopts >> "$log" 2>&1
done
for m in "${modules_disabled[@]}"; do
  $ms --disable "$m" menuselect.makeopts >> "$log" 2>&1
done
for m in "${modules[@]}"; do
  $ms --enable "$m" menuselect.makeopts >> "$log" 2>&1 || fail "menuselect cannot enable $m (see $log)"
done
$ms --check-deps menuselect.makeopts >> "$log" 2>&1 || fail "menuselect dependency check failed (see $log)"

say "asterisk build: make -j2"
make -j2 "${buildflags[@]}" >> "$log" 2>&1 || fail "make failed (see $log)"
say "asterisk build: make install"
make install "${buildflags[@]}" >> "$log" 2>&1 || fail "make install failed (see $log)"
for m in "${modules[@]}"; do
  [ -f "$prefix/lib/asterisk/modules/$m.so" ] || fail "module $m.so was not built (see $log)"
done
recipe > "$stamp"
say "asterisk build: built $("$prefix/sbin/asterisk" -V) in $(( $(date +%s) - started )) s:" \
    "$(ls "$prefix/lib/asterisk/modules" | wc -l) modules in $prefix"
