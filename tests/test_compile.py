"""Training and evaluation under ``torch.compile`` with the default backend (inductor).

A compiled network must compute what the eager one computes, step after step, with a fresh random partition
and pair-drop mask every training step flowing through one graph as data (no graph break, no recompilation
per step), and a batch of another size (the last, smaller batch) costing at most one more graph.
``fallback_random`` makes inductor draw its random numbers with eager's generators, so both runs see the same
partitions and masks and can be compared number for number.
"""

from __future__ import annotations

import copy

import pytest
import torch
from benchmarks.cuda_check import SmallNet
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import nsrep
from nsrep.nn.unit import UnitConfig

F64_TOL = 1e-10
F32_TOL = 1e-4


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Every test counts its own graphs; random ops fall back to eager's generators (comparable draws)."""
    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):
        yield
    torch._dynamo.reset()


def _step(model: nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach()


def _assert_same_state(compiled: nn.Module, eager: nn.Module, tol: float) -> None:
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=tol, atol=tol, msg=f"gradient of {name}")
    for (name, a), b in zip(eager.named_buffers(), compiled.buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol, msg=f"buffer {name}")


def _train_and_compare(unit: UnitConfig, dtype: torch.dtype, tol: float, batches=(4, 4, 4, 3, 5)) -> int:
    """Train an eager and a compiled copy side by side on ``batches`` (sizes), then evaluate both; returns the
    number of graphs the compiled copy needed."""
    eager = SmallNet(unit).to(dtype)
    model = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, backend=counter)
    for step, batch in enumerate(batches):
        x = torch.randn(batch, 3, 8, 8, dtype=dtype)
        for m in (eager, model):
            m.zero_grad(set_to_none=True)
        expected, got = _step(eager, x, seed=step), _step(compiled, x, seed=step)
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol, msg=f"training output at step {step}")
        _assert_same_state(model, eager, tol)
        with torch.no_grad():  # move the weights so every step's forward differs
            for a, b in zip(eager.parameters(), model.parameters(), strict=True):
                a.sub_(0.1 * a.grad)
                b.sub_(0.1 * b.grad)
    training_graphs = counter.frame_count
    eager.eval(), model.eval()
    with torch.no_grad():
        for batch in (4, 4, 2):
            x = torch.randn(batch, 3, 8, 8, dtype=dtype)
            torch.testing.assert_close(compiled(x), eager(x), rtol=tol, atol=tol, msg="eval output")
    assert counter.frame_count - training_graphs <= 2, "eval recompiled for a batch size it had seen"
    return training_graphs


def test_stochastic_ns_network_compiles_once_and_matches_eager_in_float64():
    """The issue's crash (dbb-ns, inductor): a fresh partition and pair-drop mask every step are data of one
    graph; the smaller batch adds one (dynamic-batch) graph and the larger one after it reuses that graph."""
    unit = UnitConfig(family="dbb", connectivity="ns", stochastic=1.0, pair_drop=0.2)
    graphs = _train_and_compare(unit, torch.float64, F64_TOL)
    assert graphs <= 2, f"{graphs} graphs for two batch sizes: a step recompiled"


def test_partial_stochastic_partition_is_one_graph_too():
    """With 0 < stochastic < 1 the coin is a tensor too: fixed and random grouping share one graph."""
    unit = UnitConfig(family="acnet", connectivity="ns", stochastic=0.5)
    graphs = _train_and_compare(unit, torch.float32, F32_TOL, batches=(4, 4, 4, 4))
    assert graphs == 1, f"{graphs} graphs for one batch size: a step recompiled"


def test_compiled_model_folds_and_saves_like_the_eager_one(tmp_path):
    model = SmallNet(UnitConfig(family="repvgg", connectivity="ns")).eval()
    compiled = torch.compile(model)
    x = torch.randn(2, 3, 8, 8)
    deployed = nsrep.reparameterize(compiled)  # unwraps _orig_mod
    assert not any(isinstance(m, nsrep.RepConv2d) for m in deployed.modules())
    torch.testing.assert_close(deployed(x), model(x), rtol=F32_TOL, atol=F32_TOL)
    assert set(nsrep.reparam.unwrap_model(compiled).state_dict()) == set(model.state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("family", nsrep.nn.families.ALL_FAMILIES)
@pytest.mark.parametrize("connectivity", ["block", "naive", "ns"])
def test_every_family_and_connectivity_compiles_and_matches_eager(family, connectivity):
    unit = UnitConfig(family=family, connectivity=connectivity, pair_drop=0.2 if connectivity != "block" else 0.0)
    graphs = _train_and_compare(unit, torch.float64, F64_TOL)
    assert graphs <= 2, f"{graphs} graphs for two batch sizes: a step recompiled"
