"""``nsrep deploy``: fold a training checkpoint into the plain network."""

from __future__ import annotations

from nsrep.cli.command import arg, command


@command(
    arg("checkpoint", help="a run folder or its checkpoint.pt"),
    arg("--out", required=True, help="deploy folder to write"),
)
def deploy(checkpoint: str, *, out: str) -> None:
    """Fold a training checkpoint into the plain network; save safetensors weights and config.json in OUT."""
    from nsrep.train.runs import deploy_checkpoint

    folder, equivalence = deploy_checkpoint(checkpoint, out)
    print(f"deployed model written to {folder}; vs the unfolded branches: {equivalence}")
