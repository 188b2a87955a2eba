"""The core layers: units, branches, fold math, streams and guided ops (one concept per module)."""
