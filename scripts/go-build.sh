# Shared helper (sourced, not run): a Go toolchain and Go libraries from Debian's golang-* packages, unpacked (never
# installed), and offline GOPATH-mode builds of the test suite's Go programs on them.  scripts/provision-client-go
# and scripts/provision-kube-apiserver source it (after scripts/debian-fetch.sh, and after defining `die`).
#
#   go_root_ready DEST GO_MINOR IMPORT_DIR      # true if DEST holds an unpacked root: SOURCE-PACKAGES, the Go
#                                               # toolchain and usr/share/gocode/src/IMPORT_DIR
#   go_provision_root NAME DEST SUITE GO_MINOR IMPORT_DIR PIN PACKAGE...
#                                               # fetch PACKAGE... (the Go toolchain golang-GO_MINOR-go is added) and
#                                               # their golang-* closure from Debian SUITE, unpack them into DEST;
#                                               # PIN is PKG=VERSION: fail unless SUITE's candidate of PKG is VERSION-*
#   go_source_hash SRC_DIR DEST [LDFLAGS]       # 16 hex digits naming a build of SRC_DIR's *.go + go.mod on DEST
#   go_build NAME DEST GO_MINOR SRC_DIR IMPORT_PATH BIN [LDFLAGS]
#                                               # build SRC_DIR as IMPORT_PATH into BIN (atomically); LDFLAGS are
#                                               # added to -s -w (e.g. -X settings), and to the hash
#
# NAME prefixes the progress messages (stderr).  The caller holds the lock of its cache (flock) around
# go_provision_root and go_build, and registers temporary directories for removal in the array `cleanup`.
#
# Layout of DEST:  usr/lib/go-GO_MINOR (GOROOT), usr/share/gocode (Debian's Go libraries: the GOPATH entry),
# SOURCE-PACKAGES (the .debs it came from, one a line), gocache/ (the GOCACHE of its builds).
#
# Builds are in GOPATH mode (GO111MODULE=off GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=0; no network): GOPATH is a
# private directory holding the program under src/IMPORT_PATH, then the unpacked usr/share/gocode.  Debian lays
# out a module's /vN import path without the /vN directory; Go's "minimal module compatibility" maps such imports
# back only for importing code that has a go.mod, hence a go.mod beside each program's main.go.

# The golang-* closure of PACKAGE... under Depends / Pre-Depends, one name a line.  A dependency group of
# alternatives resolves to its first golang-*-dev/-go/-src member, a virtual package to its first provider.
# Needs debian_apt_setup first (DEBIAN_APT_PRIVATE).
golang_closure() {
    local -A seen=()
    local queue=("$@") next p
    for p in "$@"; do seen[$p]=1; done
    while ((${#queue[@]})); do
        next=()
        while read -r p; do
            [[ -n "$p" && -z "${seen[$p]:-}" ]] || continue
            seen[$p]=1
            next+=("$p")
        done < <(
            apt-cache "${DEBIAN_APT_PRIVATE[@]}" depends --no-recommends --no-suggests --no-conflicts --no-breaks \
                --no-replaces --no-enhances "${queue[@]}" | awk '
                function wanted(n) { return n ~ /^golang-(.*-)?(dev|go|src)$/ }
                function flush() { if (cand != "") print cand; cand = ""; ingroup = 0 }
                /^[^ ]/ { flush(); next }
                /^  \|?(Pre)?Depends: / {
                    alt = ($0 ~ /^  \|/)
                    if (!cont) flush()
                    ingroup = 1; cont = alt
                    name = $2
                    if (name ~ /^</) { virtual = 1 } else { virtual = 0; if (cand == "" && wanted(name)) cand = name }
                    next
                }
                /^    [^ ]/ { if (ingroup && virtual && cand == "" && wanted($1)) cand = $1; next }
                /^  / { if (!cont) flush(); next }
                END { flush() }'
        )
        queue=("${next[@]}")
    done
    printf '%s\n' "${!seen[@]}" | sort
}

go_root_ready() {
    local dest="$1" go_minor="$2" import_dir="$3"
    [[ -f "$dest/SOURCE-PACKAGES" && -x "$dest/usr/lib/go-$go_minor/bin/go" && -d "$dest/usr/share/gocode/src/$import_dir" ]]
}

go_provision_root() {
    local name="$1" dest="$2" suite="$3" go_minor="$4" import_dir="$5" pin="$6"
    shift 6
    local work staging link target candidate packages=()
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
        || die "this is not a Debian system (no apt-get / dpkg-deb): the Go packages cannot be provisioned here"
    mkdir -p "$(dirname "$dest")"
    work="$(mktemp -d "$(dirname "$dest")/.provision-${dest##*/}.XXXXXX")"
    cleanup+=("$work")
    echo "$name: fetching Go $go_minor + $* and their golang-* dependencies (Debian $suite) ..." >&2
    debian_apt_setup "$suite" "$work"
    candidate="$(apt-cache "${DEBIAN_APT_PRIVATE[@]}" policy "${pin%%=*}" | sed -n 's/^ *Candidate: *//p')"
    [[ "$candidate" == "${pin#*=}"-* ]] || die "Debian $suite ships ${pin%%=*} '${candidate:-none}', not ${pin#*=}"
    mapfile -t packages < <(golang_closure "golang-$go_minor-go" "$@")
    ((${#packages[@]} > $# + 1)) || die "could not compute the golang-* dependency closure of $*"
    echo "$name: ${#packages[@]} packages" >&2
    debian_download "$work" "${packages[@]}"
    staging="$work/root"
    [[ -x "$staging/usr/lib/go-$go_minor/bin/go" ]] || die "golang-$go_minor-go holds no usr/lib/go-$go_minor/bin/go"
    [[ -d "$staging/usr/share/gocode/src/$import_dir" ]] || die "the packages hold no usr/share/gocode/src/$import_dir"
    # Debian's GOROOT points into /usr/share/go-N with absolute symlinks, and its Go libraries link into one
    # another the same way: point them into the unpacked tree.
    while IFS= read -r link; do
        target="$(readlink "$link")"
        if [[ "$target" == /* ]]; then
            ln -sfn "$(realpath -m --relative-to="$(dirname "$link")" "$staging$target")" "$link"
        fi
    done < <(find "$staging/usr/lib/go-$go_minor" "$staging/usr/share/go-$go_minor" "$staging/usr/share/gocode" -type l 2>/dev/null)
    ls "$work"/debs/*.deb | xargs -n1 basename >"$staging/SOURCE-PACKAGES"
    GOROOT="$staging/usr/lib/go-$go_minor" GOTOOLCHAIN=local "$staging/usr/lib/go-$go_minor/bin/go" version >/dev/null \
        || die "the unpacked Go toolchain does not run"
    rm -rf "$dest"
    mv "$staging" "$dest"
    go_root_ready "$dest" "$go_minor" "$import_dir" || die "unpacked into $dest, but it lacks the Go toolchain or $import_dir"
    echo "$name: Go $go_minor + $* ready in $dest" >&2
}

# The hash that names a build: the program's sources, the packages it is built from, the build settings.
go_source_hash() {
    local src_dir="$1" dest="$2" ldflags="${3:-}" f
    [[ -f "$src_dir/main.go" ]] || die "missing $src_dir/main.go"
    {
        for f in "$src_dir"/*.go "$src_dir"/go.mod; do
            [[ -f "$f" ]] || continue
            printf '%s\n' "${f##*/}"
            cat "$f"
        done
        cat "$dest/SOURCE-PACKAGES"
        echo "GO111MODULE=off CGO_ENABLED=0 -trimpath -ldflags=-s -w${ldflags:+ $ldflags}"
    } | sha256sum | cut -c1-16
}

# Build SRC_DIR (its *.go and go.mod) as IMPORT_PATH into BIN, offline, with DEST's toolchain and libraries; old
# builds beside BIN with the same name before the last '-' (other source hashes) go after a day.
go_build() {
    local name="$1" dest="$2" go_minor="$3" src_dir="$4" import_path="$5" bin="$6" ldflags="${7:-}" start f gopath
    local goroot="$dest/usr/lib/go-$go_minor" gocode="$dest/usr/share/gocode"
    mkdir -p "$(dirname "$bin")" "$dest/gocache"
    gopath="$(mktemp -d "$dest/.gopath.XXXXXX")"
    cleanup+=("$gopath" "$bin.tmp")
    mkdir -p "$gopath/src/$import_path"
    for f in "$src_dir"/*.go "$src_dir"/go.mod; do [[ -f "$f" ]] && cp "$f" "$gopath/src/$import_path/"; done
    echo "$name: building $import_path (the first build takes a few minutes) ..." >&2
    start=$SECONDS
    (
        cd "$gopath/src/$import_path"
        env -u GOFLAGS -u GOENV GOENV=off GOROOT="$goroot" GOPATH="$gopath:$gocode" GOCACHE="$dest/gocache" \
            GO111MODULE=off GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off \
            "$goroot/bin/go" build -trimpath -ldflags="-s -w${ldflags:+ $ldflags}" -o "$bin.tmp" .
    ) >&2 || die "building $import_path failed (see above)"
    mv "$bin.tmp" "$bin"
    echo "$name: built $bin in $((SECONDS - start)) s" >&2
    # builds of other sources older than a day go (another checkout still using one rebuilds it from GOCACHE)
    local base="${bin##*/}"
    find "$(dirname "$bin")" -maxdepth 1 -name "${base%-*}-*" ! -name "$base" -mmin +1440 -delete 2>/dev/null || true
}
