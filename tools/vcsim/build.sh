#!/bin/sh
# Build vsan-vcsim offline from Debian's govmomi source plus our changes.
#
#   tools/vcsim/build.sh [OUTDIR]      -> ${OUTDIR:-<repo>/.build/vcsim}/vsan-vcsim
#
# OUTDIR/gopath is a GOPATH overlay: src/github.com/vmware/govmomi/simulator
# is a copy of Debian's simulator package with patches/*.patch applied (in
# name order) and simulator-extra/*.go added; every other entry of
# /usr/share/gocode/src is a symlink.  The build is skipped when a hash of
# all inputs matches the one recorded by the last successful build.
#
# VSAN_VCSIM_RACE=1 builds with Go's race detector (go build -race: slower,
# prints "WARNING: DATA RACE" reports to the simulator's log); its default
# OUTDIR is <repo>/.build/vcsim-race and the switch is part of the hash, so a
# race build never stands in for a normal one.  Tests: run them with
# VSAN_FLOWS_BUILD_DIR=<dir> VSAN_VCSIM_RACE=1 (the launcher builds into
# <dir>/vcsim), see README.md.
set -eu

PROG=vsan-vcsim
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
GOCODE=${VSAN_VCSIM_GOCODE:-/usr/share/gocode/src}
GOVMOMI=$GOCODE/github.com/vmware/govmomi
RACE=${VSAN_VCSIM_RACE:-0}
case $RACE in
    0 | "") RACE=0; RACEFLAG=; DEFAULT_OUT=$REPO/.build/vcsim ;;
    1) RACEFLAG=-race; DEFAULT_OUT=$REPO/.build/vcsim-race ;;
    *) echo "$PROG: VSAN_VCSIM_RACE must be 0 or 1, not '$RACE'" >&2; exit 2 ;;
esac
OUTDIR=${1:-$DEFAULT_OUT}

fail() { echo "$PROG: $*" >&2; exit 2; }

command -v go >/dev/null 2>&1 || fail "go not found in PATH; run tools/test-setup.sh (installs golang-go)"
[ -f "$GOVMOMI/simulator/simulator.go" ] || fail "govmomi source not found at $GOVMOMI; run tools/test-setup.sh (installs golang-github-vmware-govmomi-dev)"
command -v patch >/dev/null 2>&1 || fail "patch not found in PATH; apt-get install patch"

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
BIN=$OUTDIR/$PROG
STAMP=$OUTDIR/.inputs.sha256

# One build at a time per OUTDIR (test runs may call this concurrently).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$OUTDIR/.lock"
    flock 9
fi

# Everything the binary depends on: our sources, the govmomi tree (by file
# list and sizes/mtimes, cheap), the Go version.
inputs_hash() {
    {
        echo "go: $(go version)"
        echo "race: $RACE"
        echo "govmomi: $(dpkg-query -W -f '${Version}' golang-github-vmware-govmomi-dev 2>/dev/null) $(stat -c %Y "$GOVMOMI/simulator" "$GOVMOMI/vim25/types/types.go" | tr '\n' ' ')"
        cd "$HERE"
        for f in build.sh main.go patches/*.patch simulator-extra/*.go; do
            [ -f "$f" ] && { echo "== $f"; cat "$f"; }
        done
    } | sha256sum | cut -d' ' -f1
}

HASH=$(inputs_hash)
if [ -x "$BIN" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
    echo "$PROG: up to date: $BIN" >&2
    exit 0
fi

GOPATH_DIR=$OUTDIR/gopath
rm -rf "$GOPATH_DIR"
mkdir -p "$GOPATH_DIR/src"

# Symlink every entry of $1 into $2, except the one named $3 (made a real dir).
link_all_but() {
    for e in "$1"/* "$1"/.[!.]*; do
        [ -e "$e" ] || continue
        n=$(basename "$e")
        [ "$n" = "$3" ] && continue
        ln -s "$e" "$2/$n"
    done
    mkdir -p "$2/$3"
}
link_all_but "$GOCODE" "$GOPATH_DIR/src" github.com
link_all_but "$GOCODE/github.com" "$GOPATH_DIR/src/github.com" vmware
link_all_but "$GOCODE/github.com/vmware" "$GOPATH_DIR/src/github.com/vmware" govmomi
link_all_but "$GOVMOMI" "$GOPATH_DIR/src/github.com/vmware/govmomi" simulator

SIM=$GOPATH_DIR/src/github.com/vmware/govmomi/simulator
rmdir "$SIM"
cp -r "$GOVMOMI/simulator" "$SIM"
chmod -R u+w "$SIM"
for p in "$HERE"/patches/*.patch; do
    [ -f "$p" ] || continue
    if ! out=$(patch -p1 -N -s -d "$SIM" <"$p" 2>&1); then
        fail "patch $(basename "$p") does not apply to $GOVMOMI/simulator: $(echo "$out" | head -n 1)"
    fi
done
find "$SIM" -name '*.orig' -delete
for f in "$HERE"/simulator-extra/*.go; do
    [ -f "$f" ] && cp "$f" "$SIM/"
done
mkdir -p "$GOPATH_DIR/src/vsan-vcsim"
cp "$HERE/main.go" "$GOPATH_DIR/src/vsan-vcsim/main.go"

rm -f "$STAMP"
if ! (cd "$GOPATH_DIR/src/vsan-vcsim" &&
      GOPATH=$GOPATH_DIR GO111MODULE=off GOFLAGS= GOPROXY=off \
      go build $RACEFLAG -o "$BIN.new" .); then
    rm -f "$BIN.new"
    fail "go build failed (see above)"
fi
mv -f "$BIN.new" "$BIN"
echo "$HASH" >"$STAMP"
echo "$PROG: built $BIN${RACEFLAG:+ (race detector)}" >&2
