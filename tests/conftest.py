import pytest
import torch

# Test tensors are tiny, so intra-op threads buy nothing; and two OpenMP threads on a 2-core machine with any
# other busy process stall at every barrier (measured: one training step 1 s alone, 70-100 s under load).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    """Seed every test and keep float32 matmuls exact (TF32 off), so tolerances mean what they say."""
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
