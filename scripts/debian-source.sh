#!/usr/bin/env bash
# Fetches a Debian source package with Debian's own tools, without touching the
# machine's apt configuration: a private deb-src list is derived from the
# machine's existing Debian `deb` entries (same URIs and Signed-By, so no mirror
# name is written anywhere in this repository), indexed into a private lists
# directory, and `apt-get source --download-only` fetches the package. apt checks
# every file against the signed index; this script prints each file's sha256.
#
# Usage: scripts/debian-source.sh PACKAGE DEST_DIR [SUITE ...]
#   SUITE defaults to "unstable testing"; the first suite that carries PACKAGE wins.
# Prints "version=<debian version>" and "sha256 <file>=<hash>" lines on stdout.
# Exit 0: fetched. Exit 3: not available (no Debian source entry, no such package,
# network refused); the reason is on stderr in one line.
set -euo pipefail

package=${1:?package}
dest=${2:?destination directory}
shift 2
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(unstable testing)

unavailable() { echo "debian-source: $*" >&2; exit 3; }

# The machine's main Debian archive: URIs and Signed-By of its first deb entry
# that is not a security or updates suite (deb822 .sources or one-line .list).
uri="" signed=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  read -r uri signed < <(awk '
    BEGIN { RS=""; FS="\n" }
    {
      t=u=s=g=""
      for (i=1;i<=NF;i++) {
        if ($i ~ /^Types:/) t=$i
        else if ($i ~ /^URIs:/) { u=$i; sub(/^URIs:[ \t]*/,"",u); split(u,a,/[ \t]+/); u=a[1] }
        else if ($i ~ /^Suites:/) s=$i
        else if ($i ~ /^Signed-By:/) { g=$i; sub(/^Signed-By:[ \t]*/,"",g) }
      }
      if (t ~ /deb([ \t]|$)/ && s !~ /security/ && u != "") { print u, (g==""?"-":g); exit }
    }' "$f") || true
  [ -n "$uri" ] && break
done
if [ -z "$uri" ]; then
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    line=$(grep -E '^deb[[:space:]]' "$f" | grep -v security | head -n1) || true
    [ -n "$line" ] || continue
    signed=$(sed -nE 's/.*signed-by=([^] ]+).*/\1/p' <<<"$line")
    uri=$(sed -E 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' <<<"$line" | awk '{print $1}')
    [ -n "$signed" ] || signed=-
    break
  done
fi
[ -n "$uri" ] || unavailable "no Debian deb entry in /etc/apt to derive a deb-src entry from"
[ "$signed" != "-" ] || signed=/usr/share/keyrings/debian-archive-keyring.gpg

mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
apt_dir="$dest/.apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
{
  for suite in "${suites[@]}"; do
    printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n\n' "$uri" "$suite" "$signed"
  done
} > "$apt_dir/src.sources"
apt_opts=(-o "Dir::Etc::sourcelist=$apt_dir/src.sources" -o "Dir::Etc::sourceparts=-"
          -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
          -o "Debug::NoLocking=true" -o "APT::Sandbox::User=$(id -un)" -q)

apt-get "${apt_opts[@]}" update >"$apt_dir/update.log" 2>&1 \
  || unavailable "apt-get update of the deb-src index failed (see $apt_dir/update.log)"
version=$(apt-cache "${apt_opts[@]}" showsrc "$package" 2>/dev/null | awk '/^Version:/{print $2; exit}') || true
[ -n "$version" ] || unavailable "no source package '$package' in ${suites[*]}"

(cd "$dest" && apt-get "${apt_opts[@]}" source --download-only "$package=$version") >"$apt_dir/source.log" 2>&1 \
  || unavailable "apt-get source $package=$version failed (see $apt_dir/source.log)"
echo "version=$version"
upstream=${version#*:}
upstream=${upstream%-*}
for file in "$dest"/"${package}_${upstream}"*; do
  [ -f "$file" ] && echo "sha256 $(basename "$file")=$(sha256sum "$file" | cut -d' ' -f1)"
done
