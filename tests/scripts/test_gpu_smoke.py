"""The smoke run of the paper profile's code paths (``scripts/gpu_smoke.py``), on this
machine's device: on CPU in ``make test``, on a GPU by hand (docs/gpu.md)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, run_guarded


@pytest.mark.smoke
def test_the_smoke_run_passes_with_no_hub(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc, attempts = run_guarded(
        [sys.executable, str(ROOT / "scripts" / "gpu_smoke.py"), "--out", str(out)],
        tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert attempts == []  # every model and tokenizer built from configs
    record = json.loads(out.read_text())
    assert record["precision"] == ("bf16" if torch.cuda.is_available() else "fp32")
    sections = record["sections"]
    assert set(sections) == {"04", "05", "06"}
    for name, section in sections.items():
        assert section["ppo_updates"] == record["scale"]["updates"], name
        assert section["seconds_per_update"] > 0 and math.isfinite(section["kl"]), name
        assert (section["peak_gpu_gib"] is None) == (not torch.cuda.is_available())
    assert sections["04"]["policy_device"] == sections["04"]["reference_device"]
    assert sections["06"]["tokens_per_answer"] <= record["scale"]["tokens_06"]
    llama = sections["05"]
    assert llama["em_bases"] == 1  # every EM slot an adapter on one base
    assert set(llama["win_rate_vs_sft"]) == {"majority", "minority"}
    assert all(0.0 <= w <= 1.0 for w in llama["win_rate_vs_sft"].values())
    assert llama["answer_tokens"] == record["scale"]["tokens_05"]  # EOS banned: full length
