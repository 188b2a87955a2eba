"""``nsrep features``: write a feature file for ``nsrep probe``."""

from __future__ import annotations

from typing import Any

from nsrep.cli.command import arg, command
from nsrep.cli.options import DATA_HELP
from nsrep.probe import SKLEARN_DATASETS, extract_features


@command(
    arg("--out", required=True, help="feature file to write (.npz)"),
    arg("--encoder", help="TorchScript file, ONNX file (.onnx) or module:function"),
    arg("--data", help=DATA_HELP),
    arg("--sklearn", help=f"a scikit-learn bundled data set instead: {', '.join(SKLEARN_DATASETS)}"),
    arg("--image-size", help="input size for image folders and synthetic data"),
    arg("--batch-size", help="images per encoder call (default: {default})"),
    arg("--device", help="auto, cpu or cuda"),
    defaults=extract_features,
)
def features(
    *,
    out: str,
    encoder: str | None = None,
    data: str | None = None,
    sklearn: str | None = None,
    image_size: int | None = None,
    device: str = "auto",
    **encoding: Any,
) -> None:
    """Write a feature file (.npz) for ``nsrep probe``: an encoder's features of image data, or a scikit-learn set.

    ``--encoder`` is a TorchScript file, an ONNX file or ``module:function`` (called with no arguments, it
    returns the encoder); ``--data`` anything ``nsrep train --data`` takes. Images get the data set's eval
    transform; the encoder's outputs are flattened to (N, D) float32.
    """
    from nsrep.probe import load_encoder, resolve_device, save_features, sklearn_features

    if sklearn is not None:
        if encoder is not None or data is not None or image_size is not None:
            raise ValueError("--sklearn writes a bundled data set as it is; drop --encoder, --data and --image-size")
        result = sklearn_features(sklearn)
    else:
        if encoder is None or data is None:
            raise ValueError("give --encoder and --data (or --sklearn NAME for a bundled data set)")
        from nsrep.data.datasets import load_data

        dev = resolve_device(device)
        images = load_data(data, image_size=image_size)
        result = extract_features(load_encoder(encoder, dev), images, device=dev, **encoding)
    save_features(out, result)
    print(f"wrote {out}: {result}")
