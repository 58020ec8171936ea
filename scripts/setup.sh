#!/usr/bin/env bash
# scripts/setup.sh — install everything Aetherless needs on a Debian 12 machine.
#
# Idempotent: every step checks first and does nothing when the machine is
# already set up (a second run takes a few seconds and changes nothing).
# Every step is printed with a "[setup]" prefix; a failure says what failed
# and what to do next, and exits non-zero.
#
# Steps
#   1. Debian packages (clang, llvm, libbpf-dev, libhwloc-dev, nginx-light, wrk,
#      the CRIU build dependencies, ...). `apt-get update` runs at most once, and
#      only when something is missing. Package scripts are kept from starting
#      services (policy-rc.d), so nginx never listens on port 80 behind our back.
#   2. CRIU >= 4.2. Debian 12's criu (3.17) fails on our kernels (vDSO layout,
#      SO_PASSSEC) and trixie's 4.1.1 still fails on SO_PASSSEC, so when the
#      installed criu is older or `criu check` fails, CRIU is built from sid's
#      source package (fetched through a private apt list that leaves the
#      system's sources alone) and installed as /usr/local/sbin/criu.
#   3. Rust: the pinned toolchain (rust-toolchain.toml) with rustfmt and clippy.
#   4. A summary of the versions in use.
#
# Environment
#   AETHERLESS_CACHE_DIR      work/cache directory (default /var/cache/aetherless)
#   AETHERLESS_DEBIAN_MIRROR  Debian mirror URI for sid sources (default: read
#                             from this machine's own apt sources)
#   AETHERLESS_CRIU_SUITE     Debian suite to take CRIU's source from (default sid)
#   AETHERLESS_CRIU_PREFIX    where the built criu goes (default /usr/local/sbin)
#
# Note on CRIU speed (not a setup problem): CRIU caches its kernel probe in
# /run/criu.kdat only when /run is a tmpfs. On machines where /run is not a
# tmpfs every criu process re-probes the kernel (~100 ms); the dataplane runs
# criu in a private mount namespace with a tmpfs on /run to get the cache.

set -euo pipefail

readonly MIN_CRIU_VERSION="4.2"
CACHE_DIR=$(realpath -m "${AETHERLESS_CACHE_DIR:-/var/cache/aetherless}")
readonly CACHE_DIR
readonly CRIU_DIR="${CACHE_DIR}/criu-build"
readonly CRIU_SUITE="${AETHERLESS_CRIU_SUITE:-sid}"
APT_ETC=/etc/apt # only changed by tests of find_debian_mirror
readonly CRIU_PREFIX="${AETHERLESS_CRIU_PREFIX:-/usr/local/sbin}"

# Required Debian packages. python3 and curl are usually in the base image;
# listing them costs nothing when they are there.
readonly APT_REQUIRED=(
    # eBPF programs (C, compiled with clang -target bpf) and their loader
    clang llvm libbpf-dev
    # topology (hwlocality) and native builds
    libhwloc-dev libudev-dev pkg-config gcc make
    # network namespaces, veth, XDP attach, firewall rules CRIU replays
    iproute2 iptables nftables
    # gateway benchmark baseline and load generator
    nginx-light wrk
    # tools the scripts and examples use
    python3 curl ca-certificates xz-utils
    # CRIU build dependencies (see DESIGN.md, "Environment facts")
    # (CRIU >= 4 runs `protoc` with the protobuf-c plugin and imports
    # google/protobuf/descriptor.proto, hence protobuf-compiler/libprotobuf-dev)
    libprotobuf-c-dev protobuf-c-compiler protobuf-compiler libprotobuf-dev python3-protobuf
    libnl-3-dev libnet1-dev libcap-dev libbsd-dev libgnutls28-dev
    libnftables-dev uuid-dev
)
# Nice to have: installed when the mirror has them, a warning otherwise.
readonly APT_OPTIONAL=(bpftrace linux-perf)

# rustup/cargo live in ~/.cargo/bin, the built criu in /usr/local/sbin; find
# them even when started with a minimal PATH (sudo, cron, CI runners).
for dir in /usr/local/sbin /usr/sbin /sbin "$HOME/.cargo/bin"; do
    case ":$PATH:" in
        *":$dir:"*) ;;
        *) [[ -d $dir ]] && PATH="$PATH:$dir" ;;
    esac
done
export PATH

SCRIPT_START=$(date +%s)
STEP_START=$SCRIPT_START
APT_UPDATED=0
POLICY_RC_CREATED=0

log() { printf '[setup] %s\n' "$*"; }
warn() { printf '[setup] WARNING: %s\n' "$*" >&2; }
# die MESSAGE [HINT...]: print what failed and what to do, then exit 1.
die() {
    printf '[setup] ERROR: %s\n' "$1" >&2
    shift
    local hint
    for hint in "$@"; do printf '[setup]   -> %s\n' "$hint" >&2; done
    exit 1
}
step() {
    STEP_START=$(date +%s)
    printf '[setup] ==> %s\n' "$*"
}
step_done() { log "    done in $(( $(date +%s) - STEP_START ))s"; }

cleanup() {
    if [[ $POLICY_RC_CREATED == 1 ]]; then
        rm -f /usr/sbin/policy-rc.d
    fi
}

# version_ge A B: true when version A >= version B (dotted numbers).
version_ge() {
    [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]
}

# ---------------------------------------------------------------------------
# 0. Preconditions
# ---------------------------------------------------------------------------
preflight() {
    step "checking the machine"
    if [[ $(id -u) -ne 0 ]]; then
        die "setup must run as root (it installs packages and /usr/local/sbin/criu)" \
            "run: sudo $0"
    fi
    command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian 12 (bookworm)"
    # shellcheck source=/dev/null
    . /etc/os-release
    OS_CODENAME="${VERSION_CODENAME:-}"
    if [[ "${ID:-}" != debian ]]; then
        warn "this is ${PRETTY_NAME:-an unknown OS}; setup is written for Debian 12 and may fail"
    fi
    [[ -n $OS_CODENAME ]] || die "cannot read VERSION_CODENAME from /etc/os-release"
    log "    ${PRETTY_NAME:-unknown}, kernel $(uname -r), $(nproc) CPUs"
    mkdir -p "$CACHE_DIR"
}

# ---------------------------------------------------------------------------
# 1. Debian packages
# ---------------------------------------------------------------------------
pkg_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

apt_update_once() {
    [[ $APT_UPDATED == 1 ]] && return 0
    log "    apt-get update"
    if ! apt-get -o DPkg::Lock::Timeout=300 update -qq; then
        die "apt-get update failed" \
            "check that the Debian mirror in /etc/apt/sources.list.d/*.sources is reachable, then re-run"
    fi
    APT_UPDATED=1
}

# Keep package maintainer scripts from starting services (nginx would start
# listening on port 80). Debian's invoke-rc.d honours policy-rc.d exit 101.
block_service_starts() {
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# temporary, created by aetherless scripts/setup.sh\nexit 101\n' \
            >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
}

apt_install() {
    block_service_starts
    log "    apt-get install $*"
    if ! DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
        --no-install-recommends "$@"; then
        die "apt-get install failed for: $*" \
            "read the apt output above; 'apt-get -f install' may repair a half-finished install"
    fi
    if [[ $POLICY_RC_CREATED == 1 ]]; then
        rm -f /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=0
    fi
}

install_packages() {
    step "Debian packages"
    local missing=() optional=() p
    for p in "${APT_REQUIRED[@]}"; do
        pkg_installed "$p" || missing+=("$p")
    done
    # Node.js: the base image may carry its own (e.g. nodesource's node 20);
    # take Debian's only when there is no node at all.
    if command -v node >/dev/null; then
        log "    node $(node --version) already present ($(command -v node)); not touching it"
    else
        missing+=(nodejs)
    fi
    # Optional packages that could not be installed before are not retried on
    # every run (that would cost an apt-get update each time).
    local skipped_file="$CACHE_DIR/optional-packages-unavailable"
    for p in "${APT_OPTIONAL[@]}"; do
        pkg_installed "$p" && continue
        if [[ -f $skipped_file ]] && grep -qx "$p" "$skipped_file"; then
            log "    optional $p: unavailable on an earlier run, not retrying (delete $skipped_file to retry)"
            continue
        fi
        optional+=("$p")
    done

    if ((${#missing[@]} == 0 && ${#optional[@]} == 0)); then
        log "    all ${#APT_REQUIRED[@]} required packages installed; nothing to do"
        step_done
        return
    fi
    apt_update_once
    if ((${#missing[@]} > 0)); then
        apt_install "${missing[@]}"
    fi
    for p in "${optional[@]}"; do
        local candidate
        candidate=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
        if [[ -z $candidate || $candidate == "(none)" ]]; then
            warn "optional package $p is not available from the configured mirrors; skipping it"
            printf '%s\n' "$p" >>"$skipped_file"
            continue
        fi
        # Optional: a failure here is a warning, not a stop.
        block_service_starts
        if ! DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
            --no-install-recommends "$p"; then
            warn "optional package $p failed to install; continuing without it"
            printf '%s\n' "$p" >>"$skipped_file"
        fi
    done
    step_done
}

# nginx is only a benchmark baseline that our scripts start on their own port.
# Make sure the distribution's service is neither running nor enabled.
quiet_nginx() {
    step "nginx system service (must not run)"
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
        if systemctl is-enabled --quiet nginx 2>/dev/null || systemctl is-active --quiet nginx 2>/dev/null; then
            log "    systemctl disable --now nginx"
            systemctl disable --now nginx || die "could not stop/disable nginx via systemd" \
                "run 'systemctl disable --now nginx' by hand and re-run"
        fi
    else
        # No systemd: sysvinit links and the service's pid file.
        if compgen -G '/etc/rc[2-5].d/S*nginx' >/dev/null && command -v update-rc.d >/dev/null; then
            log "    update-rc.d nginx disable"
            update-rc.d nginx disable >/dev/null 2>&1 || warn "update-rc.d nginx disable failed"
        fi
        local pidfile=/run/nginx.pid pid
        if [[ -r $pidfile ]]; then
            pid=$(<"$pidfile")
            if [[ $pid =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == nginx ]]; then
                log "    stopping the nginx service (pid $pid from $pidfile)"
                nginx -s stop 2>/dev/null || kill "$pid" || warn "could not stop nginx pid $pid"
            fi
        fi
    fi
    log "    nginx service not running"
    step_done
}

# ---------------------------------------------------------------------------
# 2. CRIU
# ---------------------------------------------------------------------------
# criu_version BINARY: print "X.Y[.Z]" or nothing.
criu_version() {
    "$1" --version 2>/dev/null | awk '/^Version:/ {print $2; exit}'
}

# criu_works BINARY: version >= MIN and `criu check` says "Looks good.".
# Leaves the check's output in CRIU_CHECK_OUTPUT.
CRIU_CHECK_OUTPUT=""
criu_works() {
    local bin=$1 ver
    ver=$(criu_version "$bin")
    if [[ -z $ver ]]; then
        CRIU_CHECK_OUTPUT="$bin --version printed no version"
        return 1
    fi
    if ! version_ge "$ver" "$MIN_CRIU_VERSION"; then
        CRIU_CHECK_OUTPUT="$bin is version $ver, need >= $MIN_CRIU_VERSION"
        return 1
    fi
    CRIU_CHECK_OUTPUT=$("$bin" check 2>&1) || return 1
    grep -q 'Looks good' <<<"$CRIU_CHECK_OUTPUT"
}

# Print "URI SIGNED_BY" of the first Debian mirror in the system's apt sources
# serving this release (suite == codename or codename-updates). Reads deb822
# *.sources files and one-line *.list files; skips disabled entries.
find_debian_mirror() {
    local codename=$1 f
    {
        for f in "$APT_ETC"/sources.list.d/*.sources; do
            [[ -r $f ]] || continue
            awk '
                function flush(   n, m, i, j, U, S) {
                    if (types ~ /(^| )deb( |$)/ && tolower(enabled) != "no") {
                        n = split(uris, U, /[ \t]+/); m = split(suites, S, /[ \t]+/)
                        for (i = 1; i <= n; i++) for (j = 1; j <= m; j++)
                            if (U[i] != "" && S[j] != "") print U[i], S[j], (signed == "" ? "-" : signed)
                    }
                    types = uris = suites = signed = last = ""; enabled = "yes"
                }
                /^[ \t]*#/ { next }
                /^[ \t]*$/ { flush(); next }
                /^[ \t]/ {                      # continuation line
                    if (last == "uris") uris = uris " " $0
                    else if (last == "suites") suites = suites " " $0
                    next
                }
                {
                    key = tolower(substr($0, 1, index($0, ":") - 1))
                    val = substr($0, index($0, ":") + 1); gsub(/^[ \t]+|[ \t]+$/, "", val)
                    last = key
                    if (key == "types") types = val
                    else if (key == "uris") uris = val
                    else if (key == "suites") suites = val
                    else if (key == "enabled") enabled = val
                    else if (key == "signed-by" && val ~ /^\//) signed = val
                }
                END { flush() }
            ' "$f"
        done
        for f in "$APT_ETC"/sources.list "$APT_ETC"/sources.list.d/*.list; do
            [[ -r $f ]] || continue
            awk '
                $1 != "deb" { next }
                {
                    i = 2; signed = "-"
                    if ($2 ~ /^\[/) {
                        while (i <= NF) {
                            if ($i ~ /signed-by=/) { s = $i; sub(/.*signed-by=/, "", s); sub(/\]$/, "", s); signed = s }
                            if ($i ~ /\]$/) { i++; break }
                            i++
                        }
                    }
                    print $i, $(i + 1), signed
                }
            ' "$f"
        done
    } | awk -v c="$codename" '($2 == c || $2 == c "-updates") && $1 !~ /security/ { print $1, $3; exit }'
}

# Download and unpack CRIU's upstream source from Debian's $CRIU_SUITE.
# Prints the unpacked source directory.
fetch_criu_source() {
    local mirror=${AETHERLESS_DEBIAN_MIRROR:-} signed="-" line
    if [[ -z $mirror ]]; then
        line=$(find_debian_mirror "$OS_CODENAME")
        [[ -n $line ]] || die "no Debian mirror for '$OS_CODENAME' found in /etc/apt/sources.list{,.d/*}" \
            "set AETHERLESS_DEBIAN_MIRROR=http://<your mirror>/debian and re-run"
        mirror=${line%% *}
        signed=${line#* }
    fi
    mirror=${mirror%/}
    local apt_dir="$CRIU_DIR/apt" src_dir="$CRIU_DIR/src"
    mkdir -p "$apt_dir/lists/partial" "$src_dir"
    local opt_signed=""
    if [[ $signed != "-" && -r $signed ]]; then
        opt_signed="[signed-by=$signed] "
    fi
    printf 'deb-src %s%s %s main\n' "$opt_signed" "$mirror" "$CRIU_SUITE" >"$apt_dir/sources.list"
    log "    private apt list: $(cat "$apt_dir/sources.list")" >&2
    # Only our own list and state directory: the system's sources stay untouched.
    local -a apt_opts=(
        -o "Dir::Etc::SourceList=$apt_dir/sources.list"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$apt_dir/lists"
        -o "Dir::Cache::pkgcache="
        -o "Dir::Cache::srcpkgcache="
        -o "Acquire::Languages=none"
        -o "APT::Sandbox::User=root"
    )
    log "    apt-get update (private list, suite $CRIU_SUITE)" >&2
    apt-get "${apt_opts[@]}" update -qq --error-on=any >&2 \
        || die "apt-get update of the private $CRIU_SUITE source list failed" \
            "check that $mirror is reachable (or set AETHERLESS_DEBIAN_MIRROR) and re-run"
    local version
    version=$(apt-cache "${apt_opts[@]}" showsrc criu 2>/dev/null | awk '/^Version:/ {print $2}' | sort -V | tail -n1)
    [[ -n $version ]] || die "Debian $CRIU_SUITE at $mirror has no criu source package"
    local upstream=${version#*:}
    upstream=${upstream%-*}
    log "    $CRIU_SUITE has criu $version (upstream $upstream)" >&2
    version_ge "$upstream" "$MIN_CRIU_VERSION" \
        || die "Debian $CRIU_SUITE only has criu $upstream, need >= $MIN_CRIU_VERSION" \
            "point AETHERLESS_DEBIAN_MIRROR at a current Debian mirror, or install criu >= $MIN_CRIU_VERSION yourself"

    local tarball
    tarball=$(compgen -G "$src_dir/criu_${upstream}.orig.tar.*" | head -n1 || true)
    if [[ -z $tarball ]]; then
        log "    apt-get source --download-only criu=$version" >&2
        # The Debian packaging tarball is sometimes missing from the mirror
        # (apt then exits 100) while the upstream orig tarball, which is all
        # we need, has arrived. Judge by the file, not the exit code.
        local rc=0
        (cd "$src_dir" && apt-get "${apt_opts[@]}" source --download-only -qq "criu=$version") >&2 || rc=$?
        tarball=$(compgen -G "$src_dir/criu_${upstream}.orig.tar.*" | head -n1 || true)
        [[ -n $tarball ]] || die "downloading criu_${upstream}.orig.tar.* failed (apt-get exit $rc)" \
            "check the apt output above; the mirror must serve pool/main/c/criu/ for $CRIU_SUITE"
        ((rc == 0)) || log "    apt-get exited $rc but the upstream tarball arrived; that is all we need" >&2
    else
        log "    using cached $(basename "$tarball")" >&2
    fi

    local build_root="$CRIU_DIR/build/criu-$upstream"
    if [[ ! -f $build_root/Makefile ]]; then
        log "    unpacking $(basename "$tarball")" >&2
        rm -rf "$build_root.tmp"
        mkdir -p "$build_root.tmp"
        tar -xf "$tarball" -C "$build_root.tmp" --strip-components=1 \
            || die "unpacking $tarball failed" "delete $tarball and re-run to download it again"
        rm -rf "$build_root"
        mv "$build_root.tmp" "$build_root"
    fi
    printf '%s\n' "$build_root"
}

build_criu() {
    local src=$1 logf
    logf="$(dirname "$1")/build-$(basename "$1").log"
    if [[ -x $src/criu/criu ]] && [[ -n "$(criu_version "$src/criu/criu")" ]]; then
        log "    reusing the built $src/criu/criu"
        return
    fi
    log "    make -j$(nproc) criu (log: $logf; about 20 s here, a few minutes at most)"
    if ! make -C "$src" -j"$(nproc)" criu >"$logf" 2>&1; then
        tail -n 40 "$logf" >&2
        die "building CRIU failed (last lines of $logf above)" \
            "a missing build dependency is the usual cause: install it with apt-get and re-run"
    fi
    [[ -x $src/criu/criu ]] || die "make criu finished but $src/criu/criu does not exist" "see $logf"
}

ensure_criu() {
    step "CRIU >= $MIN_CRIU_VERSION"
    local bin seen=""
    for bin in "$CRIU_PREFIX/criu" "$(command -v criu || true)"; do
        [[ -n $bin && -x $bin && $bin != "$seen" ]] || continue
        seen=$bin
        if criu_works "$bin"; then
            log "    $bin $(criu_version "$bin"): criu check passes"
            step_done
            return
        fi
        log "    $bin ($(criu_version "$bin" || true)) is not usable: $(head -n1 <<<"$CRIU_CHECK_OUTPUT")"
    done

    # Reuse a binary built by an earlier run, else download and build.
    local src="" cand
    for cand in "$CRIU_DIR"/build/criu-*/criu/criu; do
        [[ -x $cand ]] || continue
        local v
        v=$(criu_version "$cand")
        if [[ -n $v ]] && version_ge "$v" "$MIN_CRIU_VERSION"; then
            src=${cand%/criu/criu}
        fi
    done
    if [[ -n $src ]]; then
        log "    found a CRIU build from an earlier run in $src"
    else
        log "    building CRIU from Debian $CRIU_SUITE's source package in $CRIU_DIR"
        src=$(fetch_criu_source) || exit 1
        build_criu "$src"
    fi

    log "    install $src/criu/criu -> $CRIU_PREFIX/criu"
    # Install under a temporary name and rename: running criu processes keep
    # their old binary and nobody ever sees a half-written file.
    install -D -m 0755 "$src/criu/criu" "$CRIU_PREFIX/.criu.new" \
        || die "cannot write $CRIU_PREFIX/.criu.new" "check that $CRIU_PREFIX is writable"
    mv -f "$CRIU_PREFIX/.criu.new" "$CRIU_PREFIX/criu"
    local ver
    ver=$(criu_version "$CRIU_PREFIX/criu")
    if ! criu_works "$CRIU_PREFIX/criu"; then
        printf '%s\n' "$CRIU_CHECK_OUTPUT" >&2
        die "$CRIU_PREFIX/criu (version ${ver:-unknown}) does not pass 'criu check' (output above)" \
            "CRIU needs root with CAP_SYS_ADMIN/CAP_CHECKPOINT_RESTORE and a kernel with CONFIG_CHECKPOINT_RESTORE" \
            "run '$CRIU_PREFIX/criu check --all -v4' for details"
    fi
    log "    $CRIU_PREFIX/criu $ver: criu check passes"
    local first
    first=$(command -v criu || true)
    if [[ $first != "$CRIU_PREFIX/criu" ]]; then
        warn "'criu' on PATH is ${first:-nothing}, not $CRIU_PREFIX/criu; put $CRIU_PREFIX first in PATH"
    fi
    step_done
}

# ---------------------------------------------------------------------------
# 3. Rust
# ---------------------------------------------------------------------------
ensure_rust() {
    step "Rust toolchain (rust-toolchain.toml)"
    local repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if ! command -v rustup >/dev/null; then
        if command -v cargo >/dev/null; then
            warn "rustup not found; using $(cargo --version) as is"
            step_done
            return
        fi
        die "neither rustup nor cargo found" "install Rust with rustup (https://rustup.rs), then re-run"
    fi
    local toolchain
    toolchain=$(cd "$repo" && rustup show active-toolchain 2>/dev/null | awk '{print $1; exit}') \
        || die "rustup cannot provide the toolchain pinned in $repo/rust-toolchain.toml" \
            "run 'rustup toolchain install' in $repo (needs access to static.rust-lang.org)"
    log "    toolchain $toolchain"
    local installed missing=() c
    installed=$( (cd "$repo" && rustup component list --installed) 2>/dev/null || true)
    for c in rustfmt clippy; do
        grep -q "^$c" <<<"$installed" || missing+=("$c")
    done
    if ((${#missing[@]} > 0)); then
        log "    rustup component add ${missing[*]}"
        if ! (cd "$repo" && timeout 180 rustup component add "${missing[@]}"); then
            warn "could not add ${missing[*]} (no access to static.rust-lang.org?); 'cargo fmt'/'cargo clippy' will not work"
        fi
    else
        log "    rustfmt and clippy present"
    fi
    if command -v cargo-nextest >/dev/null; then
        log "    cargo-nextest present (optional)"
    fi
    step_done
}

# ---------------------------------------------------------------------------
# 4. Summary
# ---------------------------------------------------------------------------
summary() {
    step "versions"
    v() { printf '[setup]     %-10s %s\n' "$1" "$2"; }
    v clang "$(clang --version 2>/dev/null | head -n1 || echo missing)"
    v criu "$(criu_version "$CRIU_PREFIX/criu" 2>/dev/null || true) ($(command -v criu || echo 'not on PATH'))"
    v nginx "$(nginx -v 2>&1 | sed 's/^nginx version: //' || echo missing)"
    v wrk "$( (wrk -v 2>&1 || true) | awk 'NR==1 {print $2}')"
    v hwloc "$(pkg-config --modversion hwloc 2>/dev/null || echo missing)"
    v libbpf "$(pkg-config --modversion libbpf 2>/dev/null || echo missing)"
    v rustc "$(rustc --version 2>/dev/null || echo missing)"
    v node "$(node --version 2>/dev/null || echo missing)"
    v python3 "$(python3 --version 2>/dev/null || echo missing)"
    log "setup finished in $(( $(date +%s) - SCRIPT_START ))s"
}

main() {
    trap cleanup EXIT
    preflight
    install_packages
    quiet_nginx
    ensure_criu
    ensure_rust
    summary
}

# Run only when executed, so the functions can be sourced and tested.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
