"""Drop-path on stream sets: one per-sample mask shared by every stream, identity in eval."""

import pytest
import torch

from nsrep.nn.drop_path import DropPath, drop_path, drop_path_rates


def test_one_mask_per_sample_shared_by_every_stream():
    torch.manual_seed(0)
    x = torch.randn(4, 64, 3, 5, 5, dtype=torch.float64)
    y = drop_path(x, 0.5, training=True)
    kept = y.abs().flatten(2).sum(-1) > 0  # (S, B)
    assert (kept == kept[:1]).all(), "streams of one sample must share the keep/drop decision"
    assert 0 < int(kept[0].sum()) < 64
    # the aggregate is the plain network's drop-path of the aggregate, with the same mask
    scale = kept[0].to(x.dtype) / 0.5
    torch.testing.assert_close(y.sum(0), x.sum(0) * scale.view(-1, 1, 1, 1), rtol=1e-14, atol=1e-14)


def test_identity_in_eval_and_folds_to_identity():
    m = DropPath(0.3).eval()
    x = torch.randn(2, 3, 4, 5, 5)
    assert m(x) is x
    assert isinstance(m.fold(), torch.nn.Identity)


def test_plain_maps_use_batch_dim_zero():
    torch.manual_seed(1)
    y = drop_path(torch.ones(32, 2, 3), 0.5, training=True, batch_dim=0)
    per_sample = y.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 2).all(1)).all()


def test_linear_rule_and_bad_rate():
    assert drop_path_rates(0.2, 5) == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert drop_path_rates(0.1, 1) == [0.0]
    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\), got 1.5"):
        DropPath(1.5)
