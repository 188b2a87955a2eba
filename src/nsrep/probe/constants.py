"""Names shared by the probe modules."""

REQUIRED_KEYS = ("train_x", "train_y", "test_x", "test_y")
DEFAULT_HEADS = ("linear", "mlp", "ns-mlp")
SKLEARN_DATASETS = ("digits", "breast_cancer", "wine")
EXAMPLE_DATASETS = ("digits", "breast_cancer")  # the embedded example of ``nsrep probe --example``
SKLEARN_TEST_FRACTION, SKLEARN_SPLIT_SEED = 0.2, 0  # as the digits images of nsrep.train.data
AVERAGE = "Avg."
