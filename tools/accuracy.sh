#!/usr/bin/env bash
# Issue 20, accuracy: dml against PyTorch + pytorch-metric-learning on the same recipe
# (configs/accuracy-glyphs.toml, tools/accuracy_pml.py) on a real dataset (glyphs of the fonts
# that Debian's font packages ship, tools/make_glyphs.py), over SEEDS, one run at a time.
#
# For each seed: `dml train` on NP ranks under mpirun, `dml eval RUN` (NP ranks, --json), a
# cross-check that scores dml's own test embeddings (`dml embed`) with PML's
# AccuracyCalculator, then the PyTorch + PML twin (one process, 2 threads). Prints a table of
# each run's metrics and wall times and, per side, mean ± standard deviation (sample std,
# n − 1) over the seeds; everything is also in $OUT/results.jsonl.
#
#   apt-get install <the packages in tools/make_glyphs.py>     # once
#   bash tools/accuracy.sh                                     # SEEDS="0 1 2" NP=2
#   DML=/path/to/dml OUT=/tmp/acc/runs bash tools/accuracy.sh
#
# Makes data/glyphs/{train,test}.dmlds first if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DML=${DML:-target/release/dml}
PY=${PY:-.venv/bin/python}
CONFIG=${CONFIG:-configs/accuracy-glyphs.toml}
SEEDS=${SEEDS:-0 1 2}
NP=${NP:-2}
OUT=${OUT:-runs/accuracy-glyphs}
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1}
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
MPIRUN=(mpirun --oversubscribe --bind-to none -np "$NP")

if [[ ! -f data/glyphs/train.dmlds || ! -f data/glyphs/test.dmlds ]]; then
    "$PY" tools/make_glyphs.py --out data/glyphs/src
    "$DML" prepare --format csv --src data/glyphs/src/glyphs.csv --out data/glyphs --size 72
fi

mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: > "$RESULTS"
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

for seed in $SEEDS; do
    run=$OUT/dml-s$seed
    rm -rf "$run"
    echo "== seed $seed: dml train ($NP ranks), load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    t0=$(now)
    "${MPIRUN[@]}" "$DML" train --config "$CONFIG" --out "$run" --set train.seed="$seed" >&2
    t1=$(now)
    "${MPIRUN[@]}" "$DML" eval "$run" --json > "$run/eval.json"
    t2=$(now)
    "$DML" embed "$run" --out "$run/test.npy" >&2
    pml_on_dml=$("$PY" - "$run/test.npy" "$run/test_labels.npy" <<'EOF'
import json, sys
import numpy as np
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
e, l = np.load(sys.argv[1]), np.load(sys.argv[2])
m = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
a = AccuracyCalculator(include=m, k="max_bin_count").get_accuracy(e, l, e, l, ref_includes_query=True)
print(json.dumps({k: float(a[k]) for k in m}))
EOF
)
    "$PY" - "$run/eval.json" "$seed" "$(secs "$t0" "$t1")" "$(secs "$t1" "$t2")" "$pml_on_dml" >> "$RESULTS" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
m = json.loads(text[text.index("{"):text.rindex("}") + 1])
check = json.loads(sys.argv[5])
out = {"side": "dml", "seed": int(sys.argv[2])}
out.update({k: m[k] for k in check})
out.update({"train_s": float(sys.argv[3]), "eval_s": float(sys.argv[4]), "pml_on_dml_embeddings": check})
print(json.dumps(out))
EOF
    tail -n 1 "$RESULTS" >&2

    echo "== seed $seed: PyTorch + PML (1 process, 2 threads), load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    "$PY" tools/accuracy_pml.py --config "$CONFIG" --seed "$seed" > "$OUT/pml-s$seed.json"
    tail -n 1 "$OUT/pml-s$seed.json" >> "$RESULTS"
    tail -n 1 "$RESULTS" >&2
done
echo "== done, load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

"$PY" - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
M = [("precision_at_1", "P@1"), ("r_precision", "R-Precision"), ("mean_average_precision_at_r", "MAP@R")]
print("| side | seed | " + " | ".join(n for _, n in M) + " | train s | eval s |")
print("|---|---:|" + "---:|" * (len(M) + 2))
for r in rows:
    print(f"| {r['side']} | {r['seed']} | " + " | ".join(f"{r[k]:.4f}" for k, _ in M)
          + f" | {r['train_s']:.0f} | {r['eval_s']:.0f} |")
print()
print("| side | runs | " + " | ".join(f"{n} mean ± std" for _, n in M) + " | train s mean |")
print("|---|---:|" + "---:|" * (len(M) + 1))
for side in ("dml", "pytorch+pml"):
    rs = [r for r in rows if r["side"] == side]
    if not rs:
        continue
    def ms(k):
        v = [r[k] for r in rs]
        return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else float("nan"))
    cells = []
    for k, _ in M:
        mu, sd = ms(k)
        cells.append(f"{mu:.4f} ± {sd:.4f}")
    print(f"| {side} | {len(rs)} | " + " | ".join(cells) + f" | {ms('train_s')[0]:.0f} |")
d = [r for r in rows if r["side"] == "dml"]
if d:
    worst = max(abs(r[k] - r["pml_on_dml_embeddings"][k]) for r in d for k, _ in M)
    print(f"\ndml eval against PML's AccuracyCalculator on the same dml embeddings: largest difference {worst:.2e}")
EOF
