"""``nsrep report SWEEP --publish DEST``: a sweep's text results, without its weights, in a folder to commit.

A study that runs over several sessions (or machines) loses its run folders with the machine; what must
survive is what the report is made of. The published folder is itself a sweep folder that ``nsrep report``
reads: the spec copy (and recipe copy), ``results.csv``, and for every finished run its ``config.yaml``,
``metrics.jsonl`` and ``summary.json``. Checkpoints, deploy folders and TensorBoard logs stay behind.
Publishing again refreshes the copies (the spec too, where it was amended under the same sweep name); a run
published earlier and missing from this sweep folder (a run of an earlier machine) is kept, and
``results.csv`` lists it as long as its ``summary.json`` is there.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import yaml

from nsrep.experiments.sweep import RECIPE_COPY, RESULTS_FILE, RUNS_DIR, SPEC_COPY, read_results, stored_spec
from nsrep.fileio import atomic_write
from nsrep.storage.folders import RunFolder

__all__ = ["PUBLISHED_RUN_FILES", "publish_sweep"]

PUBLISHED_RUN_FILES = (RunFolder.CONFIG, RunFolder.METRICS, RunFolder.SUMMARY)


def _copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(target, lambda f: f.write(source.read_bytes()))


def _check_destination(sweep: Path, dest: Path, name: str) -> None:
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"--publish {str(dest)!r} is a file; give a folder (new, or one this sweep published)")
    if dest.resolve() == sweep.resolve():
        raise ValueError(f"--publish {str(dest)!r} is the sweep folder itself; give another folder")
    theirs = dest / SPEC_COPY
    if theirs.is_file():  # the same sweep by name; its spec may have been amended since (a study's later stage)
        published = yaml.safe_load(theirs.read_text()).get("name")
        if published != name:
            raise ValueError(
                f"{str(dest)!r} holds the results of sweep {published!r}, not of {name!r}; "
                "choose another --publish folder"
            )
    if dest.is_dir() and any(dest.iterdir()) and not theirs.is_file():
        raise ValueError(f"{str(dest)!r} is not empty and holds no published sweep; choose an empty or new folder")


def publish_sweep(sweep_dir: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Copy the spec, the results and each finished run's text files of ``sweep_dir`` into ``dest``.

    Returns the files written. ``results.csv`` in ``dest`` holds every run published there so far (this
    sweep's finished runs and those an earlier publication left), in the spec's plan order.
    """
    sweep, dest = Path(sweep_dir), Path(dest)
    spec = stored_spec(sweep)  # refuses a folder that is not a sweep
    rows = read_results(sweep)
    _check_destination(sweep, dest, spec.name)
    written = [_copy(sweep / SPEC_COPY, dest / SPEC_COPY)]
    if (sweep / RECIPE_COPY).is_file():
        written.append(_copy(sweep / RECIPE_COPY, dest / RECIPE_COPY))
    for row in rows:
        run = sweep / RUNS_DIR / row["run"]
        missing = [name for name in PUBLISHED_RUN_FILES if not (run / name).is_file()]
        if missing:
            raise ValueError(f"run {row['run']!r} is in {RESULTS_FILE} but lacks {', '.join(missing)} in {str(run)!r}")
        written += [_copy(run / name, dest / RUNS_DIR / row["run"] / name) for name in PUBLISHED_RUN_FILES]
    written.append(_merge_results(sweep, dest, [p.name for p in spec.plans()]))
    return written


def _merge_results(sweep: Path, dest: Path, plan_order: list[str]) -> Path:
    """``dest``'s results.csv: this sweep's rows, plus rows published before whose runs this sweep lacks."""
    with open(sweep / RESULTS_FILE, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = list(reader.fieldnames or []), {r["run"]: r for r in reader}
    if (dest / RESULTS_FILE).is_file():
        with open(dest / RESULTS_FILE, newline="") as f:
            for row in csv.DictReader(f):
                if row["run"] not in rows and (dest / RUNS_DIR / row["run"] / RunFolder.SUMMARY).is_file():
                    rows[row["run"]] = row
    order = {name: i for i, name in enumerate(plan_order)}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(sorted(rows.values(), key=lambda r: order.get(r["run"], len(order))))
    return atomic_write(dest / RESULTS_FILE, lambda f: f.write(buffer.getvalue().encode()))
