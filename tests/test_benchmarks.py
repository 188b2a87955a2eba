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


# ------------------------------------------------------------------------------------ the CUDA check on the CPU
# Every code path of `python -m benchmarks.cuda_check` runs here where a CPU can run it (autocast bf16 and fp16
# on the CPU included); the GPU run adds only the device.


def test_cuda_check_correctness_paths_pass_on_cpu():
    from benchmarks import cuda_check

    units = [(name, unit) for name, unit in cuda_check.unit_matrix() if name in ("dbb-ns", "ns-naive", "qadbb-ns")]
    rows = []
    for check in (cuda_check.check_folding, cuda_check.check_fast_path, cuda_check.check_amp):
        rows += check("cpu", 2, 8, units=units)
    assert len(rows) == 4 * len(units)
    assert all(row.ok for row in rows), [row for row in rows if not row.ok]
    timed = cuda_check.measure("cpu", quick=True, steps=1, budget=600, started=cuda_check.time.perf_counter())
    assert [row.value.endswith(" ms") for row in timed] == [True, True]


def test_cuda_check_exits_non_zero_on_a_correctness_failure(monkeypatch, capsys):
    from benchmarks import cuda_check

    failing = cuda_check.Row("fold exactness", "dbb-ns", "f64 1.0e-03", False)
    monkeypatch.setattr(cuda_check, "check_folding", lambda *args: [failing])
    for name in ("check_fast_path", "check_amp", "check_compiled", "measure"):
        monkeypatch.setattr(cuda_check, name, lambda *args: [])
    monkeypatch.setattr(sys, "argv", ["cuda_check", "--device", "cpu", "--quick"])
    with pytest.raises(SystemExit) as exit_info:
        cuda_check.main()
    assert exit_info.value.code == 1
    assert "| fold exactness | dbb-ns | f64 1.0e-03 | FAILED |" in capsys.readouterr().out


@pytest.mark.slow
def test_cuda_check_whole_quick_run_on_cpu(tmp_path):
    """The whole check (every family × connectivity, compiled included) at toy size: exit status 0."""
    out = tmp_path / "cuda_check.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.cuda_check", "--device", "cpu", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=3000,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "FAILED" not in out.read_text()


@pytest.mark.slow
def test_train_step_compile_table(tmp_path):
    out = tmp_path / "compile.md"
    args = ["--compile", "--width", "0.125", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--threads", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_step", *args, "--variants", "plain", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=3000,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| plain " in out.read_text() and "compiled vs eager" in out.read_text()
