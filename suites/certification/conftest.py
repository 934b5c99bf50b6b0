"""The converter under certification comes from ``--converter`` (or the selection order);
accuracy clauses use the digits checkpoint on its 360 test images."""

import pytest

from snnverify.certify import certification_data, load_adapter
from snnverify.certify.runner import CHECKPOINTS, Harness


@pytest.fixture(scope="session")
def harness(request):
    adapter = load_adapter(request.config.getoption("--converter"))
    data = certification_data("digits", CHECKPOINTS["digits"], test_images=360, cal_images=180, train_images=1257)
    yield Harness(adapter, data, time_limit_s=900)
    if callable(getattr(adapter, "close", None)):
        adapter.close()
