#!/usr/bin/env bash
# The Fashion-MNIST beta sweep (and the CNN baseline) on one GPU, all runs side by side.
#
# Runs on a lent GPU machine through the device tool, from the repository root, with the data in
# .carry/fashion-mnist and pydantic's wheels in .whl (see docs/training.md).  Every run gets the
# same wall-clock budget: its LR schedule ends when the budget (or the epoch cap) is reached.
# Results come back as split tar parts under $OUT: the artifacts without checkpoints, the logs.
set -uo pipefail
BUDGET_MINUTES=${BUDGET_MINUTES:-6.5}
EPOCH_CAP=${EPOCH_CAP:-60}
BETAS=${BETAS:-"0 1 2 4 8 16 32 inf"}
OUT=${OUT:-/tmp/sweep_out}
mkdir -p "$OUT" runs
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/machine.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/machine.txt"

common=(--data-dir .carry/fashion-mnist --device cuda --batch-size 256 --lr 0.0015
        --epochs "$EPOCH_CAP" --time-budget-minutes "$BUDGET_MINUTES" --no-progress)

# Fail fast: a few steps of the real command before spending the budget.
python3 -m trustgc_cli train --config fashion_mnist --out runs/smoke --max-steps 5 \
    --limit-train-samples 2048 --no-evaluate "${common[@]}" > "$OUT/smoke.log" 2>&1 \
    || { cat "$OUT/smoke.log"; exit 1; }
rm -rf runs/smoke

pids=()
for beta in $BETAS; do
    python3 -m trustgc_cli train --config fashion_mnist --beta "$beta" \
        --out "runs/fashion_mnist_beta_$beta" "${common[@]}" > "runs/log_beta_$beta.txt" 2>&1 &
    pids+=($!)
done
python3 -m trustgc_cli train --config fashion_mnist_dc --out runs/fashion_mnist_dc \
    "${common[@]}" > runs/log_dc.txt 2>&1 &
pids+=($!)
for pid in "${pids[@]}"; do wait "$pid" || echo "run $pid failed"; done
grep -h -A12 '"accuracy"' runs/log_*.txt > "$OUT/summary.txt" || true
tail -n 3 runs/log_*.txt >> "$OUT/summary.txt"
tar czf - --exclude=checkpoints runs | split -b 15m - "$OUT/runs.tgz.part-"
ls -la "$OUT"
