"""``nsrep demo`` (nsrep.experiments.demo): the variants as a sweep spec, the table, the plot, resuming."""

from __future__ import annotations

import pytest

from nsrep.experiments import demo as demo_module
from nsrep.experiments.demo import demo_spec, run_demo
from nsrep.train.trainer import read_metrics, train


def test_demo_trains_prints_the_table_and_plots(tmp_path, capsys):
    rows = demo_module.run_demo(
        tmp_path, variants=(("plain", "block"), ("dbb", "ns")), overrides={"epochs": 1, "width_mult": 0.125}
    )
    assert [(r.family, r.connectivity) for r in rows] == [("plain", "block"), ("dbb", "ns")]
    assert all(r.fold_error < 1e-4 and r.latency_ms > 0 for r in rows)
    assert rows[0].train_params < rows[1].train_params and rows[0].deploy_params == rows[1].deploy_params
    png = tmp_path / "learning_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = demo_module.format_demo_table(rows)
    assert table.splitlines()[0].startswith("| family | connectivity | top-1 training form")
    stamp = (tmp_path / "dbb-ns" / "checkpoint.pt").stat().st_mtime_ns
    demo_module.run_demo(tmp_path, variants=(("dbb", "ns"),), overrides={"epochs": 1, "width_mult": 0.125})
    assert (tmp_path / "dbb-ns" / "checkpoint.pt").stat().st_mtime_ns == stamp  # finished run reused
    assert "reusing the finished run" in capsys.readouterr().out


def test_demo_is_a_sweep_spec_and_resumes_an_interrupted_variant(tmp_path, capsys):
    overrides = {"epochs": 2, "width_mult": 0.125, "progress": False}
    spec = demo_spec((("plain", "block"), ("dbb", "ns")), overrides)
    assert [p.name for p in spec.plans()] == ["plain-block", "dbb-ns"]
    plan = spec.plans()[0]
    assert (plan.config.family, plan.config.epochs, plan.config.data) == ("plain", 2, "digits")
    train(plan.config, tmp_path / plan.name, stop_after=1)  # an interrupted demo run
    (tmp_path / "dbb-ns").mkdir()
    (tmp_path / "dbb-ns" / "mine.txt").write_text("not a run")
    with pytest.raises(ValueError, match="not an nsrep run folder"):  # even with fresh: never deleted
        run_demo(tmp_path, variants=(("dbb", "ns"),), overrides=overrides, fresh=True)
    assert (tmp_path / "dbb-ns" / "mine.txt").read_text() == "not a run"
    run_demo(tmp_path, variants=(("plain", "block"),), overrides=overrides)
    assert "plain-block: resuming in" in capsys.readouterr().out
    assert [m["epoch"] for m in read_metrics(tmp_path / "plain-block")] == [1, 2]
    run_demo(tmp_path, variants=(("plain", "block"),), overrides=overrides)
    assert "plain-block: reusing the finished run" in capsys.readouterr().out
