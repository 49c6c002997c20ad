# Shared helper (sourced, not run): fetch Debian packages with `apt-get download` under a PRIVATE apt
# configuration (own sources list, state, cache and status file, so the system's apt state is untouched),
# from the same Debian mirror the system's own apt sources name.  scripts/provision-etcd,
# scripts/provision-kubectl and scripts/provision-client-go source it.
#
#   source scripts/debian-fetch.sh
#   debian_fetch SUITE WORKDIR PACKAGE...   # downloads the .debs into WORKDIR/debs, unpacks them into WORKDIR/root
#
# Or in two steps, to ask the private package lists something (apt-cache) before downloading:
#   debian_apt_setup SUITE WORKDIR          # private configuration + 'apt-get update'; sets APT_CONFIG and the
#                                           # array DEBIAN_APT_PRIVATE (pass "${DEBIAN_APT_PRIVATE[@]}" to apt-get/apt-cache)
#   apt-cache "${DEBIAN_APT_PRIVATE[@]}" depends ...
#   debian_download WORKDIR PACKAGE...      # download + unpack, as debian_fetch does
#
# Functions call `die` (define it before sourcing) on failure.

# The Debian archive mirror the system itself uses: the URI of the source whose suites include the codename.
debian_mirror() {
    local codename mirror="" f
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    shopt -s nullglob
    for f in /etc/apt/sources.list.d/*.sources; do
        mirror="$(awk -v cn="$codename" '
            BEGIN { RS = ""; FS = "\n" }
            {
                uris = ""; suites = ""; types = ""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/)   { uris = $i;   sub(/^URIs:[ \t]*/, "", uris) }
                    if ($i ~ /^Suites:/) { suites = " " $i " " }
                    if ($i ~ /^Types:/)  { types = $i }
                }
                if (types ~ /[ \t]deb([ \t]|$)/ && suites ~ ("[ \t]" cn "[ \t]")) { split(uris, u, /[ \t]+/); print u[1]; exit }
            }' "$f")"
        [[ -n "$mirror" ]] && break
    done
    if [[ -z "$mirror" ]]; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [[ -f "$f" ]] || continue
            mirror="$(awk -v cn="$codename" '
                $1 == "deb" {
                    i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                    if ($(i + 1) == cn) { print $i; exit }
                }' "$f")"
            [[ -n "$mirror" ]] && break
        done
    fi
    shopt -u nullglob
    [[ -n "$mirror" ]] || die "cannot find the Debian mirror in /etc/apt/sources.list{,.d}"
    echo "$mirror"
}

# Private apt configuration in WORKDIR for SUITE, and its package lists ('apt-get update').
debian_apt_setup() {
    local suite="$1" work="$2" mirror keyring f
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || die "this is not a Debian system (no apt-get / dpkg-deb)"
    mirror="$(debian_mirror)"
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [[ -r "$keyring" ]] || die "missing $keyring (install debian-archive-keyring)"
    mkdir -p "$work/state/lists/partial" "$work/cache/archives/partial" "$work/debs" "$work/root" "$work/conf.d"
    : >"$work/status"
    echo "deb [signed-by=$keyring] $mirror $suite main" >"$work/sources.list"
    # The system's apt settings (proxy, validity checks) still apply, but without its update/dpkg hooks,
    # which would refresh system-wide caches (AppStream, PackageKit) from our private lists.
    for f in /etc/apt/apt.conf.d/*; do [[ -f "$f" ]] && cp "$f" "$work/conf.d/"; done
    [[ -f /etc/apt/apt.conf ]] && cp /etc/apt/apt.conf "$work/conf.d/zy-main.conf"
    cat >"$work/conf.d/zz-streamcodec-private" <<'CONF'
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear DPkg::Pre-Invoke;
#clear DPkg::Post-Invoke;
CONF
    # Which configuration parts apt reads is decided before command-line options apply: it has to be APT_CONFIG.
    printf 'Dir::Etc::Parts "%s";\nDir::Etc::main "/dev/null";\n' "$work/conf.d" >"$work/apt.conf"
    export APT_CONFIG="$work/apt.conf"
    if apt-config dump | grep -i 'Post-Invoke::' >/dev/null; then
        die "could not switch off apt's update hooks for the private configuration"
    fi
    DEBIAN_APT_PRIVATE=(
        -o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=/dev/null"
        -o "Dir::State=$work/state" -o "Dir::State::status=$work/status"
        -o "Dir::Cache=$work/cache" -o "APT::Sandbox::User=root" -q
    )
    apt-get "${DEBIAN_APT_PRIVATE[@]}" update >"$work/update.log" 2>&1 \
        || { cat "$work/update.log" >&2; die "private 'apt-get update' for $suite failed"; }
}

# Download PACKAGE... with the configuration debian_apt_setup made in WORKDIR; unpack them into WORKDIR/root.
debian_download() {
    local work="$1" deb
    shift
    (cd "$work/debs" && apt-get "${DEBIAN_APT_PRIVATE[@]}" download "$@") >"$work/download.log" 2>&1 \
        || { cat "$work/download.log" >&2; die "apt-get download $* failed"; }
    for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
}

debian_fetch() {
    local suite="$1" work="$2"
    shift 2
    debian_apt_setup "$suite" "$work"
    debian_download "$work" "$@"
}
