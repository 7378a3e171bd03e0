"""Shared fixtures: a tiny ViT pre-trained once per test run (the xdist workers share it) on real Fashion-MNIST."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# `make test` runs the suite in one pytest-xdist worker per core: each worker (and every process a test starts)
# then computes on its share of the cores, so that workers do not oversubscribe them. Set before torch loads.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
if _WORKERS:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    _SHARE = max(1, _cores // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_SHARE)

import pytest  # noqa: E402
import torch  # noqa: E402

from gslora.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from gslora.data import Dataset, load_dataset  # noqa: E402
from gslora.engine import pretrain  # noqa: E402
from gslora.models import save_checkpoint  # noqa: E402

if _WORKERS:
    torch.set_num_threads(_SHARE)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")

requires_fashion = pytest.mark.skipif(not (FASHION_ROOT / "t10k-images-idx3-ubyte.gz").is_file(),
                                      reason="Debian's dataset-fashion-mnist is not installed "
                                             "(apt-get install dataset-fashion-mnist)")


def tiny_model_config(family: str = "timm", depth: int = 2, **kw) -> ModelConfig:
    return ModelConfig(family=family, depth=depth, width=32, heads=2, patch_size=7, image_size=28, in_chans=1,
                       num_classes=kw.pop("num_classes", 10), **kw)


def make_npz(path: Path, *, per_class_train: list[int], per_class_test: int = 3, size: int = 28, seed: int = 0):
    """A small .npz data set in the ../shared/data format (random pixels; for input-handling tests)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    classes = [f"class_{i}" for i in range(len(per_class_train))]
    y_train = np.concatenate([np.full(n, c) for c, n in enumerate(per_class_train)]).astype(np.int64)
    y_test = np.repeat(np.arange(len(classes)), per_class_test).astype(np.int64)
    np.savez(path, x_train=rng.integers(0, 255, (len(y_train), size, size), dtype=np.uint8), y_train=y_train,
             x_test=rng.integers(0, 255, (len(y_test), size, size), dtype=np.uint8), y_test=y_test,
             classes=np.array(classes))
    return path


@pytest.fixture(scope="session")
def fashion() -> Dataset:
    if not (FASHION_ROOT / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    return load_dataset(DataConfig())


@pytest.fixture(scope="session")
def fashion_subset(fashion: Dataset, tmp_path_factory) -> tuple[Path, Dataset]:
    """A real subset (6,000 train / 2,000 test images, all 10 classes) saved as .npz."""
    import numpy as np

    g = torch.Generator().manual_seed(0)
    train = fashion.train.subset(torch.randperm(len(fashion.train), generator=g)[:6000])
    test = fashion.test.subset(torch.randperm(len(fashion.test), generator=g)[:2000])
    subset = Dataset("fashion_subset", train, test, fashion.classes)
    path = tmp_path_factory.mktemp("data") / "fashion_subset.npz"
    np.savez(path, x_train=train.images[:, 0].numpy(), y_train=train.labels.numpy(),
             x_test=test.images[:, 0].numpy(), y_test=test.labels.numpy(), classes=np.array(fashion.classes))
    return path, subset


@pytest.fixture(scope="session")
def base_checkpoint(fashion_subset, tmp_path_factory) -> Path:
    """A depth-4 ViT pre-trained for 4 epochs on the real subset (about 20 s on 2 cores), once per test run: the
    pytest-xdist workers share it (the first to ask builds it under a lock; the subset is the same in every worker).
    Tests only read it."""
    from filelock import FileLock  # a dependency of torch

    root = tmp_path_factory.getbasetemp()
    root = root.parent if _WORKERS else root  # the run's directory, above each worker's own
    path = root / "shared_base"
    with FileLock(str(path) + ".lock"):
        if not path.is_dir():
            _, subset = fashion_subset
            config = ModelConfig(depth=4, width=64, heads=4, patch_size=7, image_size=28, in_chans=1, num_classes=10)
            model, info = pretrain(config, subset, TrainConfig(epochs=4, batch_size=64, lr=2e-3, warmup_epochs=0,
                                                               device="cpu"))
            assert info["test_acc"] > 60, f"tiny pre-training failed: {info['test_acc']:.1f}%"
            partial = root / "shared_base.partial"
            shutil.rmtree(partial, ignore_errors=True)  # left by a worker that died while saving
            save_checkpoint(model, partial, classes=subset.classes, extra={"pretrain": {"test_acc": info["test_acc"]}})
            os.replace(partial, path)  # whole or absent, if a worker dies while saving
    return path


#: the files that take longest (about 15-180 s each on one core, measured at 4517fc7), longest first: pytest-xdist
#: hands whole files to the workers in collection order (``--dist loadfile --no-loadscope-reorder``: without the
#: second flag it orders files by their number of tests, which put the 4-test, 3-minute README file last), so starting
#: with these lets the short ones fill the gaps at the end instead of one worker finishing a long file alone.
SLOW_FILES = ("test_readme.py", "test_faults.py", "test_cli.py", "test_ledger.py", "test_compare.py",
              "test_distributed.py", "test_model_families.py", "test_benchmarks.py", "test_gs_lora.py",
              "test_verification.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable: each file keeps its order
