"""What :func:`nsrep.convert` did to a model: the ``nsrep_conversion`` report attached to its result."""

from __future__ import annotations

from dataclasses import dataclass, field

from nsrep.reparam import Equivalence

__all__ = ["Conversion", "ConvertedConv"]


@dataclass(frozen=True)
class ConvertedConv:
    """One ``Conv2d`` of the input model (at ``conv``) now a unit at the same path, with the BN it absorbed."""

    conv: str
    bn: str | None
    in_streams: int
    out_streams: int


@dataclass
class Conversion:
    """The report of one conversion.

    ``method``: ``"fx"`` (graph rewrite, every op made stream-aware) or ``"module-walk"`` (the fallback when
    tracing fails: block units only, see :mod:`nsrep.convert.fallback`). ``guided``: non-linear ops now taking
    their decision from the aggregate; ``stream_ops``: linear ops now acting per stream; ``after_sum``: ops that
    run on the aggregate, after a stream sum (the head, global pools, SE squeeze paths); ``plain_convs``: convs
    kept as they are, on the aggregate (SE and head convs); ``unconverted``: modules nsrep could not look
    into, with the reason. ``check``: with ``example_input`` and ``init="preserve"``, how far the converted
    model's eval output is from the input model's.
    """

    method: str
    family: str
    connectivity: str
    init: str
    units: list[ConvertedConv] = field(default_factory=list)
    guided: list[str] = field(default_factory=list)
    stream_ops: list[str] = field(default_factory=list)
    after_sum: list[str] = field(default_factory=list)
    plain_convs: list[str] = field(default_factory=list)
    unconverted: list[str] = field(default_factory=list)
    check: Equivalence | None = None

    def __str__(self) -> str:
        lines = [
            f"nsrep.convert ({self.method}): {len(self.units)} convs -> {self.family!r} units, "
            f"connectivity {self.connectivity!r}, init {self.init!r}",
            f"  guided ops: {len(self.guided)}; per-stream ops: {len(self.stream_ops)}",
        ]
        for title, items in (
            ("on the stream sum", self.after_sum),
            ("plain convs on the aggregate", self.plain_convs),
            ("not converted", self.unconverted),
        ):
            if items:
                lines.append(f"  {title}: " + "; ".join(items))
        if self.check is not None:
            lines.append(f"  example input, converted vs input model: {self.check}")
        return "\n".join(lines)
