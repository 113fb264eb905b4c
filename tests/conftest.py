import pytest
import torch

# One thread per test process: the suite runs on small CPU machines shared with other work,
# where more threads than cores slow every op down instead of speeding it up.
torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the expected dumps under tests/golden/ instead of comparing")


@pytest.fixture
def update_golden(request):
    return request.config.getoption("--update-golden")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
