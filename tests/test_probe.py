"""Heads on frozen features: feature files and their errors, training, the table, encoders, the two commands."""

import csv
import math

import numpy as np
import pytest
import torch
from torch import nn

from nsrep.cli import main
from nsrep.data.augment import build_transform
from nsrep.data.datasets import load_data
from nsrep.probe import (
    REQUIRED_KEYS,
    FeatureSet,
    ProbeConfig,
    ProbeResults,
    ProbeRun,
    extract_features,
    format_probe_table,
    load_encoder,
    load_features,
    probe_notes,
    run_probe,
    save_features,
    sklearn_features,
    summarize,
    train_head,
    write_probe_outputs,
)


def blobs(num_classes=3, dim=8, train=40, test=20, seed=0):
    """A linearly separable toy problem: one well-separated Gaussian blob per class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (num_classes, dim))

    def split(per_class):
        y = np.repeat(np.arange(num_classes), per_class)
        return (centres[y] + rng.normal(0, 1, (len(y), dim))).astype(np.float32), y.astype(np.int64)

    (train_x, train_y), (test_x, test_y) = split(train), split(test)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


# ------------------------------------------------------------------------------------------------ feature files


def test_save_and_load_round_trip(tmp_path):
    features = sklearn_features("wine")
    path = save_features(tmp_path / "wine.npz", features)
    loaded = load_features(path)
    assert loaded.name == "wine" and loaded.num_classes == 3 and loaded.in_features == 13
    for key in REQUIRED_KEYS:
        np.testing.assert_array_equal(getattr(loaded, key), getattr(features, key))
    assert loaded.train_x.dtype == np.float32 and loaded.train_y.dtype == np.int64
    assert not list(tmp_path.glob(".*tmp-*"))  # written atomically: no temporary file left


def test_sklearn_example_is_a_fixed_stratified_split():
    digits = sklearn_features("digits")
    assert digits.train_x.shape == (1437, 64) and digits.test_x.shape == (360, 64) and digits.num_classes == 10
    assert np.bincount(digits.test_y).min() >= 35  # stratified: every digit about 36 times
    again = sklearn_features("digits")
    np.testing.assert_array_equal(again.test_x, digits.test_x)
    cancer = sklearn_features("breast_cancer")
    assert cancer.train_x.shape == (455, 30) and cancer.num_classes == 2
    with pytest.raises(ValueError, match=r"unknown scikit-learn data set 'digit'.*Did you mean 'digits'"):
        sklearn_features("digit")


def bad_cases():
    """(case, arrays, expected message) for every kind of bad feature file."""
    good = blobs()
    negative, high, nan = good["train_y"].copy(), good["test_y"].copy(), good["test_x"].copy()
    negative[5], high[7], nan[3, 4] = -1, 3, np.nan
    return [
        (
            "missing",
            {k: v for k, v in good.items() if k != "test_y"},
            r"missing array\(s\) 'test_y'; a feature file needs train_x, train_y, test_x, test_y",
        ),
        (
            "not 2-D",
            {**good, "train_x": good["train_x"][:, :, None]},
            r"'train_x' must be 2-D \(samples, features\).*shape \(120, 8, 1\)",
        ),
        (
            "lengths",
            {**good, "train_y": good["train_y"][:-1]},
            r"lengths differ: 'train_x' has 120 rows but 'train_y' has 119 labels",
        ),
        (
            "float labels",
            {**good, "test_y": good["test_y"].astype(np.float64)},
            r"labels must be integers, but 'test_y' has dtype float64",
        ),
        ("negative", {**good, "train_y": negative}, r"'train_y' has the negative label -1 at index 5"),
        (
            "out of range",
            {**good, "test_y": high},
            r"'test_y' has the label 3 at index 7, out of range: the classes are 0..2 \(max\(train_y\) \+ 1\)",
        ),
        (
            "num_classes",
            {**good, "num_classes": np.int64(2)},
            r"'train_y' has the label 2 at index 80, out of range: the classes are 0..1 \(num_classes\)",
        ),
        ("dims", {**good, "test_x": good["test_x"][:, :5]}, r"'test_x' has 5 features per row but 'train_x' has 8"),
        ("nan", {**good, "test_x": nan}, r"'test_x' has 1 non-finite value\(s\).*row 3, column 4"),
        ("one class", {**good, "train_y": np.zeros(120, np.int64)}, r"at least 2 classes"),
    ]


@pytest.mark.parametrize("case,arrays,message", list(bad_cases()), ids=[c[0] for c in bad_cases()])
def test_bad_feature_files_name_file_and_key(tmp_path, case, arrays, message):
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message) as err:
        load_features(path)
    assert str(path) in str(err.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_features(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"not a readable \.npz feature file"):
        load_features(tmp_path / "junk.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="holds a single array"):
        load_features(tmp_path / "single.npy")
    np.savez(tmp_path / "objects.npz", **{**blobs(), "train_y": np.array([None] * 120, dtype=object)})
    with pytest.raises(ValueError, match="'train_y' cannot be read without pickle"):
        load_features(tmp_path / "objects.npz")


# ------------------------------------------------------------------------------------------------ training


def test_every_head_learns_a_separable_problem_and_folds(tmp_path):
    path = write_npz(tmp_path / "blobs.npz", **blobs())
    config = ProbeConfig(epochs=15, batch_size=32, lr=1e-2)
    results = run_probe([path], ("linear", "mlp", "ns-mlp", "block-mlp"), (0,), config, progress=False)
    assert results.datasets == ("blobs",) and len(results.runs) == 4
    for run in results.runs:
        assert run.deployed_top1 > 90, run
        assert run.disagreements == 0 and run.train_form_top1 == run.deployed_top1
        assert run.max_rel_logit_diff < 1e-5
    params = {r.head: (r.train_params, r.deployed_params) for r in results.runs}
    assert params["ns-mlp"][1] == params["mlp"][0] == params["mlp"][1] < params["ns-mlp"][0]
    assert "agree on every test prediction in all 4 runs" in probe_notes(results)[0]


def test_training_is_seeded_and_leaves_the_global_rng_alone():
    features = FeatureSet("blobs", *blobs().values(), num_classes=3)
    config = ProbeConfig(epochs=3, batch_size=32)
    state = torch.get_rng_state()
    a = train_head(features, "ns-mlp", 1, config)
    assert torch.equal(torch.get_rng_state(), state)
    b = train_head(features, "ns-mlp", 1, config)
    c = train_head(features, "ns-mlp", 2, config)
    assert (a.train_loss, a.deployed_top1) == (b.train_loss, b.deployed_top1)
    assert a.train_loss != c.train_loss


def test_run_probe_refuses_bad_requests(tmp_path):
    path = write_npz(tmp_path / "blobs.npz", **blobs())
    with pytest.raises(ValueError, match=r"unknown head 'mpl'.*Did you mean 'mlp'"):
        run_probe([path], ("mpl",), progress=False)
    with pytest.raises(ValueError, match="must not repeat"):
        run_probe([path], ("linear",), (0, 0), progress=False)
    with pytest.raises(ValueError, match="names must be unique"):
        run_probe([path, path], ("linear",), progress=False)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        ProbeConfig(epochs=0)


# ------------------------------------------------------------------------------------------------ the table


def fake_results(accuracy):
    """ProbeResults with given deployed top-1: accuracy[(dataset, head, seed)]."""
    runs = tuple(ProbeRun(d, h, s, a, a, 0, 1e-7, 0.1, 1.0, 10, 10) for (d, h, s), a in accuracy.items())
    datasets = tuple(dict.fromkeys(d for d, _, _ in accuracy))
    heads = tuple(dict.fromkeys(h for _, h, _ in accuracy))
    seeds = tuple(dict.fromkeys(s for _, _, s in accuracy))
    return ProbeResults(runs, datasets, heads, seeds, ProbeConfig())


def test_table_cells_are_mean_and_sample_std_over_seeds(tmp_path):
    rng = np.random.default_rng(3)
    heads = ("linear", "mlp", "ns-mlp")
    accuracy = {(d, h, s): float(rng.uniform(80, 99)) for d in ("a", "b") for h in heads for s in (0, 1, 2)}
    results = fake_results(accuracy)
    lines = format_probe_table(results).splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["head", "a", "b", "Avg."]
    for line, head in zip(lines[2:], ("linear", "mlp", "ns-mlp"), strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == head
        for cell, d in zip(cells[1:3], ("a", "b"), strict=True):
            values = [accuracy[d, head, s] for s in (0, 1, 2)]
            assert cell == f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f} (n=3)"
        per_seed = [(accuracy["a", head, s] + accuracy["b", head, s]) / 2 for s in (0, 1, 2)]
        assert cells[3] == f"{np.mean(per_seed):.2f} ± {np.std(per_seed, ddof=1):.2f} (n=3)"
    one_seed = fake_results({("a", "linear", 0): 91.0, ("a", "mlp", 0): 92.5})
    assert "91.00 (n=1)" in format_probe_table(one_seed) and math.isnan(summarize(one_seed)["linear"]["a"].std)

    written = write_probe_outputs(results, tmp_path / "out")
    with open(written["runs"]) as f:
        rows = list(csv.DictReader(f))
    assert (
        len(rows) == 18 and rows[0]["dataset"] == "a" and float(rows[0]["deployed_top1"]) == accuracy["a", "linear", 0]
    )
    assert written["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert written["table"].read_text().startswith(lines[0])


def test_notes_report_a_disagreeing_fold():
    results = fake_results({("a", "ns-mlp", 0): 90.0})
    bad = ProbeRun("a", "ns-mlp", 0, 90.0, 89.5, 2, 3e-2, 0.1, 1.0, 10, 10)
    results = ProbeResults((bad,), results.datasets, results.heads, results.seeds, results.config)
    (note,) = probe_notes(results)
    assert note.startswith("WARNING: a / ns-mlp / seed 0") and "2 test samples" in note


# ------------------------------------------------------------------------------------------------ encoders


class TinyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x)))  # (B, 4, 2, 2): flattened to 16 features


def expected_features(encoder, dataset, data):
    transform = build_transform(data.augment, train=False, image_size=data.image_size, mean=data.mean, std=data.std)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        return encoder(transform(images)).flatten(1).numpy()


def test_torchscript_encoder(tmp_path):
    data = load_data("synthetic")
    encoder = TinyEncoder().eval()
    path = tmp_path / "encoder.pt"
    torch.jit.save(torch.jit.trace(encoder, torch.randn(2, 3, 16, 16)), str(path))
    features = extract_features(load_encoder(str(path)), data, batch_size=100, progress=False)
    assert features.train_x.shape == (256, 16) and features.test_x.shape == (128, 16) and features.num_classes == 4
    np.testing.assert_allclose(features.train_x, expected_features(encoder, data.train, data), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(features.test_y, data.test.labels.numpy())


def test_module_function_encoder(tmp_path, monkeypatch):
    (tmp_path / "nsrep_probe_test_encoders.py").write_text(
        "def channel_means():\n    return lambda x: x.mean(dim=(2, 3))\n\ndef not_callable():\n    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_data("synthetic")
    features = extract_features(
        load_encoder("nsrep_probe_test_encoders:channel_means"), data, batch_size=64, progress=False
    )
    np.testing.assert_allclose(
        features.test_x, expected_features(lambda x: x.mean(dim=(2, 3)), data.test, data), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="has no function 'missing'"):
        load_encoder("nsrep_probe_test_encoders:missing")
    with pytest.raises(ValueError, match="returned a int, not a callable"):
        load_encoder("nsrep_probe_test_encoders:not_callable")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        load_encoder("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="neither an existing file"):
        load_encoder("missing-file.pt")


def test_onnx_encoder(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).normal(size=(3 * 16 * 16, 5)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["images"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["out"])],
        "linear",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 5])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "enc.onnx")
    data = load_data("synthetic")
    features = extract_features(load_encoder(str(tmp_path / "enc.onnx")), data, batch_size=100, progress=False)
    expected = expected_features(lambda x: x.flatten(1) @ torch.from_numpy(weight), data.train, data)
    np.testing.assert_allclose(features.train_x, expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------ the commands


def test_features_and_probe_commands(tmp_path, capsys):
    encoder = tmp_path / "encoder.pt"
    torch.jit.save(torch.jit.trace(TinyEncoder().eval(), torch.randn(2, 3, 16, 16)), str(encoder))
    out = tmp_path / "synthetic.npz"
    assert (
        main(["features", "--encoder", str(encoder), "--data", "synthetic", "--out", str(out), "--device", "cpu"]) == 0
    )
    assert "256 train / 128 test samples, 16 features, 4 classes" in capsys.readouterr().out
    assert main(["features", "--sklearn", "wine", "--out", str(tmp_path / "wine.npz")]) == 0
    capsys.readouterr()

    args = ["probe", str(out), str(tmp_path / "wine.npz"), "--heads", "linear,ns-mlp", "--seeds", "0", "1"]
    assert main([*args, "--epochs", "2", "--num-branches", "2", "--out", str(tmp_path / "probe")]) == 0
    printed = capsys.readouterr().out
    header = printed.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == ["head", "synthetic", "wine", "Avg."]
    assert printed.count("(n=2)") == 6 and "agree on every test prediction in all 8 runs" in printed
    assert (tmp_path / "probe" / "runs.csv").is_file() and (tmp_path / "probe" / "probe.png").is_file()


def test_probe_example_command(capsys):
    assert main(["probe", "--example", "--heads", "linear", "--epochs", "1", "--seeds", "0", "1", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| head   | digits" in printed and "breast_cancer" in printed and printed.count("(n=3)") == 3


def test_commands_report_bad_input(tmp_path, capsys):
    bad = write_npz(tmp_path / "bad.npz", **{k: v for k, v in blobs().items() if k != "train_x"})
    assert main(["probe", str(bad)]) == 2
    assert "missing array(s) 'train_x'" in capsys.readouterr().err
    assert main(["probe"]) == 2
    assert "no features to probe" in capsys.readouterr().err
    assert main(["features", "--out", str(tmp_path / "x.npz")]) == 2
    assert "give --encoder and --data" in capsys.readouterr().err
    assert main(["features", "--sklearn", "iris", "--out", str(tmp_path / "x.npz")]) == 2
    assert "unknown scikit-learn data set 'iris'" in capsys.readouterr().err
    assert main(["probe", "--help"]) == 0
    assert "--example" in capsys.readouterr().out


def test_summary_std_is_the_sample_standard_deviation():
    """Sample (n - 1) standard deviation of 91, 93.5, 92, worked by hand: mean 92.1667, squared deviations
    1.3611 + 1.7778 + 0.0278 = 3.1667, / 2 = 1.5833, sqrt = 1.2583 (the population std would be 1.0274)."""
    values = [91.0, 93.5, 92.0]
    summary = summarize(fake_results({("a", "linear", s): v for s, v in enumerate(values)}))["linear"]["a"]
    assert summary.std == pytest.approx(1.258305739, rel=1e-9)
    assert summary.mean == pytest.approx(92.1666667, rel=1e-9)
