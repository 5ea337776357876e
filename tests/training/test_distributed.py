"""Two-process DDP on the CPU (gloo) through torchrun: ranks stay in lock-step.

Each test launches ``python -m torch.distributed.run --standalone --nproc_per_node 2`` as a
subprocess (output to files under tmp_path, 120 s timeout, one OpenMP thread per rank).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this build",
)

WORKER = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    import torch
    from torch.nn.parallel import DistributedDataParallel

    from training.distributed import all_reduce_mean, setup_distributed, teardown_distributed
    from training.loss import ib_loss
    from trustgc.config import load_model_config
    from trustgc.ibinn import IBINN


    class Scorer(torch.nn.Module):
        # As training.trainer._Scorer (not imported: it pulls in scipy via the evaluation code):
        # one forward call that uses every parameter, head included, as DDP expects.
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model.score(x)


    out = Path(sys.argv[1])
    context = setup_distributed("cpu")
    try:
        torch.manual_seed(0)
        model = IBINN(load_model_config("tiny"))
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if context.rank == 1:
            # Rank 1 starts from different weights: DDP must broadcast rank 0's at wrap time.
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(1.0)
        scorer = DistributedDataParallel(Scorer(model))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        generator = torch.Generator().manual_seed(1000 + context.rank)  # rank-specific data
        losses = []
        for _ in range(3):
            x = torch.rand(8, 1, 8, 8, generator=generator)
            labels = torch.randint(0, 4, (8,), generator=generator)
            loss = ib_loss(scorer(x), labels, beta=4.0).total
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        mean_rank = all_reduce_mean(torch.tensor(float(context.rank)), context).item()
        torch.save(
            {"state": model.state_dict(), "initial": initial}, out / f"rank{context.rank}.pt"
        )
        summary = {
            "rank": context.rank,
            "world_size": context.world_size,
            "is_main": context.is_main,
            "enabled": context.enabled,
            "device": str(context.device),
            "mean_rank": mean_rank,
            "losses": losses,
        }
        (out / f"rank{context.rank}.json").write_text(json.dumps(summary))
    finally:
        teardown_distributed(context)
    """
)


def _torchrun(args: list[str], tmp_path: Path, name: str) -> None:
    """Run ``torchrun --nproc_per_node 2 ARGS``; fail with both output files on error."""
    stdout, stderr = tmp_path / f"{name}.stdout", tmp_path / f"{name}.stderr"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(variable, None)  # torchrun sets these for the workers; never inherit a parent's
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", *args]
    with stdout.open("w") as out, stderr.open("w") as err:
        try:
            result = subprocess.run(
                command, cwd=REPO, env=env, stdout=out, stderr=err, timeout=TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"torchrun timed out after {TIMEOUT_S} s; see {stdout} and {stderr}")
    if result.returncode != 0:
        pytest.fail(
            f"torchrun exited with {result.returncode}\n--- stdout\n{stdout.read_text()[-4000:]}"
            f"\n--- stderr\n{stderr.read_text()[-4000:]}"
        )


def test_ddp_ranks_end_with_identical_parameters(tmp_path: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    results = tmp_path / "results"
    results.mkdir()
    _torchrun([str(worker), str(results)], tmp_path, "worker")

    summaries = [json.loads((results / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, summary in enumerate(summaries):
        assert summary["rank"] == rank and summary["world_size"] == 2
        assert summary["enabled"] and summary["is_main"] == (rank == 0)
        assert summary["device"] == "cpu"
        assert summary["mean_rank"] == 0.5
    # The ranks saw different data, so their local losses differ ...
    assert summaries[0]["losses"] != summaries[1]["losses"]
    # ... yet averaged gradients keep the parameters bit-identical.
    saved = [torch.load(results / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    state0, state1 = saved[0]["state"], saved[1]["state"]
    assert state0.keys() == state1.keys()
    for key in state0:
        assert torch.equal(state0[key], state1[key]), key
    # Not vacuous: training moved the weights away from the (rank-0) initialisation.
    changed = [k for k in state0 if not torch.equal(state0[k], saved[0]["initial"][k])]
    assert any(".subnet." in key for key in changed)
    assert "head.full_means" in changed


@pytest.mark.slow  # a second torchrun launch: 12-19 s on a busy 2-core machine
def test_torchrun_cli_training_writes_one_artifact(tmp_path: Path) -> None:
    out = tmp_path / "ddp-model"
    args = ["-m", "trustgc_cli", "train", "--config", "tiny", "--out", str(out)]
    args += ["--epochs", "1", "--no-evaluate", "--no-progress", "--device", "cpu"]
    _torchrun(args, tmp_path, "cli")

    for name in ("model.json", "weights.safetensors", "metrics.json", "MODEL_CARD.md"):
        assert (out / name).is_file(), name
    training = json.loads((out / "model.json").read_text())["training"]
    assert training["world_size"] == 2
    # 256 synthetic images less the tiny preset's 128 for calibration: 128 training images,
    # 64 per rank, batch 32: 2 steps per rank.
    assert training["steps"] == 2 and training["epochs_completed"] == 1
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 1, "only rank 0 writes the log"
    assert log[0]["epoch"] == 1 and log[0]["step"] == 2
    assert all(isinstance(v, float | int) for v in log[0].values())
    assert json.loads((out / "metrics.json").read_text()) == {"test": {}}
