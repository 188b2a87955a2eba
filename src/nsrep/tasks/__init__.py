"""Tasks beyond classification built on nsrep backbones (example code the examples/ scripts run)."""
