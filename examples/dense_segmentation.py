"""Mosaic segmentation on CIFAR-10 JPEGs with an FPN head on nsrep backbones: plain vs block-level vs NS.

Each mosaic is 2×2 CIFAR-10 images (64×64) whose label map gives every pixel its tile's class. Training mosaics
are built from the training images only; validation mosaics from a stratified, seeded held-out share of them
(``--val-fraction``, ``--split-seed``; the CIFAR-10 test split is never read). For every backbone variant the
script trains the same Segmenter (backbone -> FPN neck -> head), reports the held-out mIoU of the training form
(eval mode) and of the folded tree (``nsrep.reparameterize`` on the whole segmenter), checks that the folded
backbone loads strictly into ``create_model(..., features_only=True, deploy=True)``, prints a markdown table and
saves a PNG of predictions.

    python examples/dense_segmentation.py --data data/train --out runs/dense
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import nsrep
from nsrep.data.datasets import ImageData, ImageFolderDataset, load_data
from nsrep.data.imagecache import cached_folder
from nsrep.fileio import write_json
from nsrep.inspection import count_parameters
from nsrep.plotting import pyplot, save_png
from nsrep.report import format_table as markdown
from nsrep.tasks.dense import Segmenter, confusion_matrix, make_mosaics, mean_iou, predict, train_segmenter
from nsrep.train.trainer import pinned_threads

# name -> (family, connectivity)
VARIANTS = {"plain": ("plain", "block"), "dbb-block": ("dbb", "block"), "dbb-ns": ("dbb", "ns")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/train", help="folder of CIFAR-10 class folders (CLASS/*.jpg)")
    p.add_argument("--out", default="runs/dense", help="where results.json, table.md and predictions.png go")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--arch", default="resnet18", choices=nsrep.list_models())
    p.add_argument("--stem", default="imagenet", choices=("cifar", "imagenet"))
    p.add_argument("--width-mult", type=float, default=0.25)
    p.add_argument("--out-indices", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--train-mosaics", type=int, default=5000)
    p.add_argument("--val-mosaics", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def load_tiles(root: str, val_fraction: float, split_seed: int) -> tuple[ImageData, torch.Tensor, torch.Tensor]:
    """The train images (native 32×32, uint8 cache) and the held-out images, decoded at the same native size."""
    data = load_data(root, image_size=32, train_item_size=32, val_fraction=val_fraction, split_seed=split_seed)
    # the held-out split is decoded like the train split (no 256/224 evaluation resize): tiles must match
    val = ImageFolderDataset(data.test.samples, data.class_names, resize_size=32, item_size=32)
    val = cached_folder(val, Path(root))
    return data, val.images, val.labels


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, val_images, val_labels = load_tiles(args.data, args.val_fraction, args.split_seed)
    train_x, train_y = make_mosaics(data.train.images, data.train.labels, args.train_mosaics, seed=args.seed)
    val_x, val_y = make_mosaics(val_images, val_labels, args.val_mosaics, seed=args.seed + 1)
    classes = data.class_names
    print(
        f"tiles: {len(data.train)} train / {len(val_images)} held out ({args.val_fraction:.0%}, split seed "
        f"{args.split_seed}); mosaics: {len(train_x)} train / {len(val_x)} val, {tuple(train_x.shape[1:])}",
        flush=True,
    )
    rows, predictions = [], {}
    with pinned_threads(args.threads):
        for name in args.variants:
            family, connectivity = VARIANTS[name]
            options = {"stem": args.stem, "width_mult": args.width_mult, "out_indices": tuple(args.out_indices)}
            torch.manual_seed(args.seed)
            backbone = nsrep.create_model(
                args.arch, family=family, connectivity=connectivity, features_only=True, **options
            )
            model = Segmenter(backbone, len(classes), mean=data.mean, std=data.std)
            steps = args.epochs * (len(train_x) // args.batch_size) * args.batch_size
            with tqdm(total=steps, desc=name, unit="img", file=sys.stderr, mininterval=10) as bar:
                log = train_segmenter(
                    model, train_x, train_y, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    seed=args.seed, progress=bar.update,
                )  # fmt: skip
            folded = nsrep.reparameterize(model)
            # the folded backbone is exactly the deploy-form feature network (strict load)
            deploy = nsrep.create_model(args.arch, features_only=True, deploy=True, **options)
            deploy.load_state_dict(folded.backbone.state_dict(), strict=True)
            pred_train = predict(model, val_x)
            pred_folded = predict(folded, val_x)
            eq = nsrep.verify_equivalence(model, folded, val_x[:64])
            miou_train = mean_iou(confusion_matrix(pred_train, val_y, len(classes)))
            miou_folded = mean_iou(confusion_matrix(pred_folded, val_y, len(classes)))
            row = {
                "variant": name,
                "family": family,
                "connectivity": connectivity,
                "params_train": count_parameters(model),
                "params_folded": count_parameters(folded),
                "miou_train_form": miou_train,
                "miou_folded": miou_folded,
                "pixel_acc_folded": float((pred_folded == val_y).double().mean()),
                "pixels_differing": int((pred_train != pred_folded).sum()),
                "max_rel_logit_error": eq.max_rel_error,
                "train_seconds": log.seconds,
                "epoch_losses": list(log.epoch_losses),
            }
            rows.append(row)
            predictions[name] = pred_folded
            print(
                f"{name}: mIoU {miou_train:.4f} (training form) / {miou_folded:.4f} (folded), "
                f"{row['pixels_differing']} pixels differ, logits {eq}, {log.seconds:.0f} s",
                flush=True,
            )
            write_json(out / "results.json", {"args": vars(args), "platform": platform.platform(), "rows": rows})

    table = format_table(rows)
    print(table)
    (out / "table.md").write_text(table + "\n")
    plot_predictions(val_x, val_y, predictions, classes, out / "predictions.png")
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'predictions.png'}")
    return 0


def format_table(rows: list[dict]) -> str:
    header = (
        "backbone",
        "params (train / folded)",
        "mIoU training form",
        "mIoU folded",
        "pixels differing",
        "max rel logit error",
        "train s",
    )
    body = [
        (
            f"{r['variant']} ({r['family']}, {r['connectivity']})",
            f"{r['params_train']:,} / {r['params_folded']:,}",
            f"{r['miou_train_form']:.4f}",
            f"{r['miou_folded']:.4f}",
            r["pixels_differing"],
            f"{r['max_rel_logit_error']:.1e}",
            f"{r['train_seconds']:.0f}",
        )
        for r in rows
    ]
    return markdown(header, body)


def plot_predictions(images, masks, predictions: dict, classes, path: Path, count: int = 6) -> None:
    """Mosaics, their label maps and each variant's folded predictions, one column per mosaic."""
    plt = pyplot()
    rows = 2 + len(predictions)
    fig, axes = plt.subplots(rows, count, figsize=(1.6 * count, 1.7 * rows))
    cmap = plt.get_cmap("tab10", len(classes))
    titles = ["mosaic", "label map", *[f"{n} (folded)" for n in predictions]]
    for j in range(count):
        panels = [images[j].permute(1, 2, 0).numpy(), masks[j].numpy(), *[p[j].numpy() for p in predictions.values()]]
        for i, panel in enumerate(panels):
            ax = axes[i, j]
            if i == 0:
                ax.imshow(panel)
            else:
                ax.imshow(panel, cmap=cmap, vmin=-0.5, vmax=len(classes) - 0.5, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(titles[i], fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(k)) for k in range(len(classes))]
    fig.legend(handles, classes, loc="lower center", ncol=len(classes), fontsize=6, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_png(fig, path)


if __name__ == "__main__":
    sys.exit(main())
