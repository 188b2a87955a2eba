"""The benchmark scripts run end to end on a tiny configuration (no speed is asserted: numbers are for docs)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "module,args",
    [
        ("benchmarks.train_step", ["--arch", "resnet18", "--width", "0.125", "--batch-size", "2", "--steps", "1",
                                   "--warmup", "0", "--threads", "1",
                                   "--variants", "plain", "dbb-ns", "ns-ns reference"]),
        ("benchmarks.inference", ["--arch", "mobilenet_v1", "--rounds", "1", "--calls", "1",
                                  "--throughput-batch", "2", "--threads", "1"]),
        ("benchmarks.reparam", ["--arch", "resnet18", "--families", "dbb", "--repeats", "1", "--threads", "1"]),
    ],
)  # fmt: skip
def test_benchmark_script_runs(module, args, tmp_path):
    out, png = tmp_path / "report.md", tmp_path / "chart.png"
    extra = ["--out", str(out)] + (["--png", str(png)] if module != "benchmarks.reparam" else [])
    done = subprocess.run(
        [sys.executable, "-m", module, *args, *extra], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = out.read_text()
    assert "Machine:" in report and "|" in report
    if module != "benchmarks.reparam":
        assert png.stat().st_size > 1000
