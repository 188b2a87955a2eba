"""Stochastic depth (``drop_path_rate``) in the nsrep architectures: timm's linear rule over blocks, one
per-sample mask shared by every stream of a residual branch, recorded in the model record, off in eval."""

from __future__ import annotations

import pytest
import torch

import nsrep
from helpers import assert_folds, classification_loss, train_steps
from nsrep.nn.drop_path import DropPath
from nsrep.storage.model_record import ModelRecord

NUM_CLASSES = 5
TINY = {"num_classes": NUM_CLASSES, "stem": "cifar", "width_mult": 0.125}


def _input(batch=6, size=8):
    return lambda: torch.randn(batch, 3, size, size, dtype=torch.float64)


def _rates(model):
    blocks = [m for m in model.modules() if hasattr(m, "drop_path")]
    return [b.drop_path.rate if isinstance(b.drop_path, DropPath) else 0.0 for b in blocks]


@pytest.mark.parametrize("arch,blocks", [("resnet18", 8), ("resnet50", 16), ("resnet34", 16)])
def test_rates_follow_timms_linear_rule_over_all_blocks(arch, blocks):
    model = nsrep.create_model(arch, family="dbb", connectivity="ns", drop_path_rate=0.15, **TINY)
    expected = [0.15 * i / (blocks - 1) for i in range(blocks)]
    assert _rates(model) == pytest.approx(expected)
    # a features_only trunk drops as the whole network does (its rates are the first blocks' of the full list)
    trunk = nsrep.create_model(arch, drop_path_rate=0.15, features_only=True, out_indices=(1, 2), **TINY)
    assert _rates(trunk) == pytest.approx(expected[: len(_rates(trunk))])


def test_record_keeps_the_rate_and_the_deployed_form_has_no_drop_path():
    model = nsrep.create_model("resnet18", family="acnet", connectivity="ns", drop_path_rate=0.1, **TINY)
    record = ModelRecord.of(model)
    assert record.options["drop_path_rate"] == 0.1
    rebuilt = ModelRecord.from_dict(record.to_dict()).build()
    assert _rates(rebuilt) == _rates(model)
    deployed = nsrep.reparameterize(model)
    assert deployed.nsrep_config["drop_path_rate"] == 0.1
    plain = ModelRecord.of(deployed).build()
    assert not any(isinstance(m, DropPath) for m in [*deployed.modules(), *plain.modules()])
    plain.load_state_dict(deployed.state_dict(), strict=True)


@pytest.mark.parametrize("arch", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])  # bottleneck: slow
@pytest.mark.parametrize("family,connectivity", [("dbb", "ns"), ("ns", "ns"), ("acnet", "block")])
def test_folds_exactly_after_training_with_drop_path(arch, family, connectivity):
    model = nsrep.create_model(arch, family=family, connectivity=connectivity, drop_path_rate=0.3, **TINY).double()
    train_steps(model, _input(), loss_fn=classification_loss(NUM_CLASSES))
    assert_folds(model, _input())


def test_one_mask_per_sample_shared_by_every_stream():
    """In training each sample's residual branch is either dropped on every stream or kept (scaled) on every
    stream, so the aggregate is the plain network's drop-path of that sample."""
    torch.manual_seed(0)
    model = nsrep.create_model(
        "resnet18", family="dbb", connectivity="ns", stochastic=0.0, drop_path_rate=0.9, **TINY
    ).double()
    block = model.stages[3][1]  # the last block: rate 0.9
    assert block.drop_path.rate == pytest.approx(0.9)
    block.train()
    s_in = model.stages[3][0].out_streams
    x = torch.randn(s_in, 64, 64, 2, 2, dtype=torch.float64)  # stage 4 of width 0.125: 64 channels
    y = block(x)
    with torch.no_grad():  # the same branch again (no stochastic grouping, no pair drop: deterministic)
        branch = block.conv2(block.act1(block.conv1(x)))
        dropped = block.act2(block.add(torch.zeros_like(branch), block.shortcut(x)))
        kept = block.act2(block.add(branch / 0.1, block.shortcut(x)))

    def same(a, b):  # a second training forward agrees to ~1e-7 (not bit for bit); dropped vs kept differ by O(1)
        return bool((a - b).abs().max() <= 1e-5 * b.abs().max())

    is_dropped = [same(y[:, b], dropped[:, b]) for b in range(x.shape[1])]
    is_kept = [same(y[:, b], kept[:, b]) for b in range(x.shape[1])]
    assert all(d != k for d, k in zip(is_dropped, is_kept, strict=True)), "a sample was dropped on some streams only"
    assert 0 < sum(is_kept) < x.shape[1]
    block.eval()
    undropped = block.act2(block.add(block.conv2(block.act1(block.conv1(x))), block.shortcut(x)))
    torch.testing.assert_close(block(x), undropped)


def test_mobilenet_has_no_residual_branch_and_says_so():
    with pytest.warns(UserWarning, match="mobilenet_v1 has no residual blocks: drop_path_rate=0.15 drops nothing"):
        model = nsrep.create_model("mobilenet_v1", drop_path_rate=0.15, **TINY)
    assert not any(isinstance(m, DropPath) for m in model.modules())


def test_bad_rate_is_refused_naming_the_value():
    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\), got 1.0"):
        nsrep.create_model("resnet18", drop_path_rate=1.0, **TINY)
    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\), got -0.1"):
        nsrep.create_model("mobilenet_v1", drop_path_rate=-0.1, **TINY)


def test_training_config_carries_the_rate_to_the_model():
    from nsrep.train.config import TrainConfig

    config = TrainConfig(arch="resnet18", width_mult=0.125, family="dbb", connectivity="ns", drop_path_rate=0.2)
    model = nsrep.create_model(**config.model_kwargs(), num_classes=NUM_CLASSES)
    assert max(_rates(model)) == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\), got 2.0"):
        TrainConfig(drop_path_rate=2.0)
