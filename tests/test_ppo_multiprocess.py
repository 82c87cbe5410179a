"""PPO across processes: ``accelerate launch --multi_gpu --num_processes 2`` on CPU runs DDP
over gloo (``--cpu`` would fall back to one process). Both ranks must end with the same
weights (DDP averages the gradients) while each judged its own half of the prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "scripts" / "ppo_two_ranks.py"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_two_process_maxmin_ppo_ranks_agree(tmp_path: Path, mode: str) -> None:
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(SCRIPT),
        str(tmp_path),
        mode,
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["digest"] == ranks[1]["digest"]  # one model, synchronized
    assert len(ranks[0]["rewards"]) == len(ranks[1]["rewards"]) == 2
    assert ranks[0]["rewards"] != ranks[1]["rewards"]  # each rank rolled out its own prompts
    # One checkpoint folder, written once (rank 0), holding both updates.
    chunks = sorted(p.name for p in (tmp_path / "work").iterdir() if p.name.startswith("chunk"))
    assert chunks == ["chunk-0000"]
    log = json.loads((tmp_path / "work" / "chunk-0000" / "log.json").read_text())
    assert [row["update"] for row in log] == [1, 2]
