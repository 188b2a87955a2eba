"""Names shared by the probe modules."""

REQUIRED_KEYS = ("train_x", "train_y", "test_x", "test_y")
DEFAULT_HEADS = ("linear", "mlp", "ns-mlp")
SKLEARN_DATASETS = ("digits", "breast_cancer", "wine")
EXAMPLE_DATASETS = ("digits", "breast_cancer")  # the embedded example of ``nsrep probe --example``
AVERAGE = "Avg."
