"""``nsrep probe``: linear / MLP / NS-MLP heads on frozen features, several seeds, a Table 4 layout."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nsrep.cli.command import arg, command, field_arg
from nsrep.models.heads import DEFAULT_EXPANSION, HEADS, MLP_HEADS, REP_HEADS
from nsrep.nn.linear import DEFAULT_LINEAR_BRANCHES
from nsrep.probe import DEFAULT_HEADS, EXAMPLE_DATASETS, ProbeConfig, run_probe


@command(
    arg("files", nargs="*", metavar="FILE.npz", help="feature files (train_x, train_y, test_x, test_y)"),
    arg("--example", help=f"add the embedded example: scikit-learn's {' and '.join(EXAMPLE_DATASETS)} (no download)"),
    arg("--heads", help=f"comma-separated heads from {', '.join(HEADS)} (default: {{default}})"),
    arg("--seeds", nargs="+", help="seeds, one run each (default: {default})"),
    field_arg(ProbeConfig, "epochs", help="default: {default}"),
    field_arg(ProbeConfig, "batch_size", help="default: {default}"),
    field_arg(ProbeConfig, "lr", help="AdamW peak lr (default: {default})"),
    field_arg(ProbeConfig, "weight_decay", help="default: {default}"),
    arg("--num-branches", metavar="K", help=f"K of {', '.join(REP_HEADS)} (default: {DEFAULT_LINEAR_BRANCHES})"),
    arg("--expansion", help=f"hidden width / input width of the MLP heads (default: {DEFAULT_EXPANSION})"),
    arg("--device", help="{default} (default), cuda or auto"),
    arg("--threads", help="CPU threads for torch (default: torch's choice)"),
    arg("--out", help="folder for table.md, runs.csv (every run) and probe.png"),
    defaults=run_probe,
)
def probe(
    files: Sequence[str] = (),
    *,
    example: bool = False,
    heads: str = ",".join(DEFAULT_HEADS),
    seeds: Sequence[int],
    num_branches: int | None = None,
    expansion: int | None = None,
    device: str,
    threads: int | None = None,
    out: str | None = None,
    **budget: Any,
) -> None:
    """Train linear / MLP / NS-MLP heads on frozen features with several seeds; print a table like Table 4.

    FILES are feature files (.npz: train_x, train_y, test_x, test_y); ``--example`` adds the embedded example
    (scikit-learn's bundled digits pixels and breast-cancer measurements, no download). Every head gets the
    same budget; cells are the deployed (folded) heads' test top-1, mean ± std over the seeds.
    ``--threads 1`` is fastest for small features on a busy CPU (intra-op threads only wait for each other).
    """
    import torch

    from nsrep.probe import format_probe_table, probe_notes, sklearn_features, write_probe_outputs

    datasets: list[Any] = [sklearn_features(name) for name in EXAMPLE_DATASETS] if example else []
    datasets += list(files)
    if not datasets:
        raise ValueError("no features to probe: give .npz feature files and/or --example")
    head_names = tuple(h.strip() for h in heads.split(",") if h.strip())
    options: dict[str, dict[str, Any]] = {}
    for head in head_names:
        if head in MLP_HEADS and expansion is not None:
            options.setdefault(head, {})["expansion"] = expansion
        if head in REP_HEADS and num_branches is not None:
            options.setdefault(head, {})["num_branches"] = num_branches
    config = ProbeConfig(**budget)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    results = run_probe(datasets, head_names, tuple(seeds), config, head_options=options, device=device)
    print(format_probe_table(results))
    print()
    print("\n".join(probe_notes(results)))
    if out is not None:
        written = write_probe_outputs(results, out)
        print(f"outputs: {', '.join(str(p) for p in written.values())}")
