#!/usr/bin/env bash
# Build and run every Aetherless benchmark, collect their JSON, print a summary.
#
#   bench/compare.sh [--smoke] [--output-dir DIR] [--strict]
#
# Every file bench/src/bin/<name>.rs (or bench/src/bin/<name>/main.rs) is a
# benchmark binary: it is built in release mode, run as
#   <name> [--smoke] --output-dir <staging dir>
# and must write <staging dir>/<name>.json (see bench/src/report.rs for the
# format). Only JSON from a run that succeeded is moved to DIR (default
# bench/results), so a failed run never leaves a stale-but-fresh-looking file.
# A new benchmark plugs in by adding its file under bench/src/bin.
#
# Exit status: 0 when every benchmark ran and wrote its JSON; 1 when one failed
# (its name is printed); with --strict, also 1 when a target was missed.
set -euo pipefail

usage() {
    sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

smoke=()
outdir=""
strict=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --smoke) smoke=(--smoke) ;;
        --strict) strict=1 ;;
        --output-dir)
            [[ $# -ge 2 ]] || { echo "compare.sh: --output-dir needs a directory" >&2; exit 2; }
            outdir="$2"
            shift
            ;;
        --output-dir=*) outdir="${1#--output-dir=}" ;;
        -h | --help) usage; exit 0 ;;
        *) echo "compare.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

for tool in cargo python3; do
    command -v "$tool" >/dev/null || { echo "compare.sh: '$tool' not found; run scripts/setup.sh first" >&2; exit 1; }
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# A DIR given on the command line is relative to where we were called from;
# the default is relative to the repository.
outdir="${outdir:-$repo/bench/results}"
mkdir -p "$outdir"
outdir="$(cd "$outdir" && pwd)"
cd "$repo"

echo "==> building benchmarks: cargo build --release -p bench --bins"
cargo build --release -p bench --bins

target_dir="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"

# Benchmarks = names of the sources in bench/src/bin that have a built binary.
names=()
shopt -s nullglob
for src in bench/src/bin/*.rs bench/src/bin/*/main.rs; do
    if [[ "$src" == */main.rs ]]; then
        name="$(basename "$(dirname "$src")")"
    else
        name="$(basename "$src" .rs)"
    fi
    if [[ ! -x "$target_dir/release/$name" ]]; then
        echo "compare.sh: $src has no binary at $target_dir/release/$name after the build" >&2
        exit 1
    fi
    names+=("$name")
done
if [[ ${#names[@]} -eq 0 ]]; then
    echo "compare.sh: no benchmark sources in bench/src/bin" >&2
    exit 1
fi

staging="$(mktemp -d "${TMPDIR:-/tmp}/aether-bench.XXXXXX")"
trap 'rm -rf "$staging"' EXIT

passed=()
failed=()
for name in "${names[@]}"; do
    echo "==> running $name ${smoke[*]} (binary $target_dir/release/$name)"
    start=$SECONDS
    if "$target_dir/release/$name" "${smoke[@]}" --output-dir "$staging"; then
        if [[ -s "$staging/$name.json" ]]; then
            mv "$staging/$name.json" "$outdir/$name.json"
            passed+=("$name")
            echo "==> $name finished in $((SECONDS - start)) s: $outdir/$name.json"
        else
            echo "compare.sh: $name exited 0 but wrote no $name.json" >&2
            failed+=("$name")
        fi
    else
        echo "compare.sh: $name failed (exit status $?)" >&2
        failed+=("$name")
    fi
done

missed=0
if [[ ${#passed[@]} -gt 0 ]]; then
    echo
    set +e
    python3 - "$outdir" "${passed[@]}" <<'PY'
import json
import sys

outdir, names = sys.argv[1], sys.argv[2:]
missed = 0
for name in names:
    with open(f"{outdir}/{name}.json") as f:
        doc = json.load(f)
    m = doc.get("machine", {})
    print(f"{doc['benchmark']}  ({'smoke' if doc.get('smoke') else 'full'} run, {doc.get('timestamp')}, "
          f"rev {str(doc.get('git_rev'))[:12]}{'+dirty' if doc.get('git_dirty') else ''}, "
          f"cores {m.get('cores_used')}, {m.get('cpu_model')})")
    results = doc.get("results", {})
    width = max((len(k) for k in results), default=0)
    for key, value in results.items():
        if isinstance(value, float):
            shown = f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
        else:
            shown = f"{value:,}" if isinstance(value, int) else str(value)
        print(f"  {key:<{width}}  {shown:>18}")
    targets = doc.get("targets", {})
    if targets:
        print("  targets:")
    for key, t in targets.items():
        op = "<=" if t["comparison"] == "at_most" else ">="
        verdict = "PASS" if t["pass"] else "MISS"
        missed += 0 if t["pass"] else 1
        print(f"    [{verdict}] {key}: {t['measured']:,.3f} {op} {t['limit']:,.3f}  ({t['description']})")
    print()
sys.exit(3 if missed else 0)
PY
    rc=$?
    set -e
    case $rc in
        0) ;;
        3) missed=1 ;;
        *) echo "compare.sh: could not read the results JSON (python3 exit $rc)" >&2; exit 1 ;;
    esac
fi

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "compare.sh: FAILED benchmarks: ${failed[*]}" >&2
    exit 1
fi
if [[ $missed -eq 1 ]]; then
    if [[ $strict -eq 1 ]]; then
        echo "compare.sh: targets missed (see MISS above) and --strict was given" >&2
        exit 1
    fi
    echo "compare.sh: all benchmarks ran; some targets were missed (see MISS above)"
else
    echo "compare.sh: all benchmarks ran; all targets met"
fi
