#!/usr/bin/env bash
# Builds kube-apiserver 1.20 from Debian's `kubernetes` source package and caches the binary
# outside the checkout (no registry ships kube-apiserver; see shared/ENVIRONMENT.md).
# Prints the cached binary's path. A second run returns at once.
set -euo pipefail
# shoal's cache directory, as in shoal.runtime.installation.cache_dir().
CACHE="${SHOAL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/shoal}/k8s"
BIN="$CACHE/kube-apiserver"
if [[ -x "$BIN" ]]; then echo "$BIN"; exit 0; fi
mkdir -p "$CACHE"
export DEBIAN_FRONTEND=noninteractive
need=()
command -v go >/dev/null || need+=(golang-go)
command -v rsync >/dev/null || need+=(rsync)
command -v dpkg-source >/dev/null || need+=(dpkg-dev)
[[ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ]] || need+=(golang-github-modern-go-reflect2-dev)
if ((${#need[@]})); then
  apt-get update -qq >&2
  apt-get install -y -qq "${need[@]}" >&2
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/shoal-k8s-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# Reuse the machine's own Debian mirror configuration, as deb-src, without touching /etc/apt.
SRCLIST="$WORK/sources.list"; : > "$SRCLIST"
mkdir -p "$WORK/parts"
for f in /etc/apt/sources.list.d/*.sources; do
  [[ -f "$f" ]] && sed 's/^Types:.*/Types: deb-src/' "$f" > "$WORK/parts/$(basename "$f")"
done
if [[ -f /etc/apt/sources.list ]]; then grep -E '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' > "$SRCLIST" || true; fi
(
  cd "$WORK"
  mkdir -p "$WORK/lists/partial"
  apt-get -o Dir::Etc::SourceList="$SRCLIST" -o Dir::Etc::SourceParts="$WORK/parts" \
    -o Dir::State::Lists="$WORK/lists" update -qq >&2
  apt-get -o Dir::Etc::SourceList="$SRCLIST" -o Dir::Etc::SourceParts="$WORK/parts" \
    -o Dir::State::Lists="$WORK/lists" source --download-only kubernetes >&2
  dpkg-source -x --skip-patches kubernetes_*.dsc src >&2 || dpkg-source -x kubernetes_*.dsc src >&2
  cd src
  # reflect2 1.0.1 (vendored) segfaults under Go >= 1.18 on the first custom-resource create.
  rm -rf vendor/github.com/modern-go/reflect2
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
  make WHAT=cmd/kube-apiserver >&2
  install -m 0755 _output/bin/kube-apiserver "$BIN.tmp"
)
mv "$BIN.tmp" "$BIN"
echo "$BIN"
