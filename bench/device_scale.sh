#!/usr/bin/env bash
# The scale figures that a 2-core machine cannot show, as one prepared run on a
# 16-core machine (workers up to 15; see docs/benchmarks.md, "On a 16-core machine").
#
#   bash bench/device_scale.sh [--quick]
#
# Writes logs and JSON files to $OUT (default /tmp/drizzle-scale), one step
# after another, each under its own time limit so that a slow step costs only
# itself. Where drizzle_ml does not import, it first makes a virtualenv that
# sees the machine's numpy, scipy, scikit-learn and h5py, installs the mpich
# and mpi4py wheels from .whl/ (carried) into it, and puts this checkout on its
# path laid out as the installed package is (no build step, nothing fetched).
# --quick: tiny sizes, to check the script itself on any machine.
set -u
OUT=${OUT:-/tmp/drizzle-scale}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1

PY=${PYTHON:-python3}
if ! "$PY" -c "import drizzle_ml, mpi4py.MPI" 2>/dev/null; then
    "$PY" -m venv --system-site-packages --without-pip /tmp/drizzle-venv || exit 1
    PY=/tmp/drizzle-venv/bin/python
    "$PY" -m pip install -q --no-index --no-deps --no-cache-dir .whl/*.whl || exit 1
    src=/tmp/drizzle-src
    rm -rf "$src" && mkdir -p "$src" && cp -r drizzle_ml "$src/"
    for sub in algorithms launch datasets; do ln -s "$PWD/$sub" "$src/drizzle_ml/$sub"; done
    echo "$src" >"$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/drizzle-src.pth"
fi
DRIZZLE=("$PY" -m drizzle_ml)

step() {  # step NAME SECONDS COMMAND...: run it, keep its output in $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s): $*"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - t0)) s"
    tail -n 40 "$OUT/$name.log"
}

{
    date -u
    nproc
    "$PY" -c "import sys, numpy, scipy, sklearn, mpi4py; from mpi4py import MPI; \
print(sys.version.split()[0], 'numpy', numpy.__version__, 'scipy', scipy.__version__, \
'sklearn', sklearn.__version__, 'mpi4py', mpi4py.__version__, MPI.Get_library_version().splitlines()[0])"
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

if [ "$QUICK" = 1 ]; then
    WORKERS=1,2 ITER=100 BIG=3 ROWS=20000 BITS=14
else
    WORKERS=1,2,4,8,15 ITER=1000 BIG=15 ROWS=200000 BITS=20
fi

# Issue 16: the cost model against measured engine runs at each worker count
# (group=1/10/100 and BSP per W), then the coordination table at the largest
# count: group=100 and BSP against the hand-written loop, and the tuner.
step scale 120 "${DRIZZLE[@]}" bench scale --workers "$WORKERS" --iterations "$ITER" --json "$OUT/scale.json"
step coordination 150 "${DRIZZLE[@]}" bench coordination --workers "$BIG" --repeats 3 --group-sizes 10,100 \
    --iterations $((2 * ITER)) --json "$OUT/coordination.json"
# Issue 20: wide sparse logistic regression, 2 workers against the largest count.
step sparse-2 140 "$PY" bench/sparse.py --rows "$ROWS" --bits "$BITS" --workers 2 --repeats 1 \
    --sharding sharded,replicated --json "$OUT/sparse-2.json"
step sparse-$BIG 140 "$PY" bench/sparse.py --rows "$ROWS" --bits "$BITS" --workers "$BIG" --repeats 1 \
    --sharding sharded,replicated --json "$OUT/sparse-$BIG.json"
echo "== done; files in $OUT"
