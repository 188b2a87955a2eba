"""Training under torchrun (nsrep.train.distributed): two gloo processes on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import TINY
from nsrep.storage.checkpoint import load_checkpoint


def test_two_process_gloo_ddp_trains_and_folds_the_same_weights_on_both_ranks(tmp_path):
    run_dir = tmp_path / "ddp"
    sets = [f"--set={k}={v}" for k, v in {**TINY, "batch_size": 32, "epochs": 1}.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "nsrep.cli",
        "train",
        "--family=dbb",
        "--connectivity=ns",
        f"--out={run_dir}",
        *sets,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    digests = summary["deployed_sha256_per_rank"]
    assert summary["world_size"] == 2 and len(digests) == 2 and digests[0] == digests[1]
    assert summary["max_rel_logit_diff"] < 1e-4
    assert summary["train_form"]["count"] == 128  # the sharded evaluation saw every test image once
    state = load_checkpoint(run_dir)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["rng"][0]["torch"] != state["rng"][1]["torch"]  # ranks draw different augmentations
