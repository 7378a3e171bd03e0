"""Image data sets: Fashion-MNIST, ``.npz`` files, ImageFolders and Hugging Face ``datasets`` directories, held in
memory as uint8 tensors or, for a folder or Hugging Face data set larger than memory, streamed (``ImageFiles``:
decoded per batch, only the keys in memory)."""

from __future__ import annotations

import gzip
import logging
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gslora.config import DEFAULT_IMAGE_SIZE, STREAM_AUTO_BYTES, DataConfig
from gslora.errors import GSLoRAError

log = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class ImageFiles:
    """Images that stay on disk until they are indexed: ``files[idx]`` (an int, a slice, a list or a tensor of
    indices) decodes and resizes those images, in ``workers`` threads, into a uint8 tensor, the same tensor an
    in-memory ``ImageSet`` would hold. Only the keys (file paths, or a Hugging Face dataset's split and row) live in
    memory, so peak memory does not grow with the data set. ``take`` and ``concat`` select and join without
    decoding."""

    dtype = torch.uint8

    def __init__(self, keys: Sequence[Any], decode: Callable[[Any], torch.Tensor], *, channels: int, size: int,
                 workers: int = 4) -> None:
        self.keys, self.decode, self.channels, self.size, self.workers = list(keys), decode, channels, size, workers

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.keys), self.channels, self.size, self.size)

    def __len__(self) -> int:
        return len(self.keys)

    def _positions(self, key) -> list[int]:
        if isinstance(key, slice):
            return list(range(len(self.keys)))[key]
        if isinstance(key, torch.Tensor) and key.dtype == torch.bool:
            return torch.nonzero(key).flatten().tolist()
        return torch.as_tensor(key).flatten().tolist()

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, int):
            return self.decode(self.keys[key])
        paths = [self.keys[i] for i in self._positions(key)]
        if not paths:
            return torch.zeros((0, self.channels, self.size, self.size), dtype=torch.uint8)
        if self.workers <= 1 or len(paths) == 1:
            return torch.stack([self.decode(p) for p in paths])
        with ThreadPoolExecutor(min(self.workers, len(paths))) as pool:  # PIL decodes outside the GIL
            return torch.stack(list(pool.map(self.decode, paths)))

    def take(self, key) -> ImageFiles:
        return ImageFiles([self.keys[i] for i in self._positions(key)], self.decode, channels=self.channels,
                          size=self.size, workers=self.workers)

    def concat(self, other: ImageFiles) -> ImageFiles:
        """Both sets' keys; they must share one decoder (the splits of one data set do)."""
        if other.decode is not self.decode:
            raise ValueError("streamed images of two data sets cannot be joined")
        return ImageFiles([*self.keys, *other.keys], self.decode, channels=self.channels, size=self.size,
                          workers=self.workers)


Images = torch.Tensor | ImageFiles


class _BatchFetch(torch.utils.data.Dataset):
    """A map-style data set whose items are whole batches: ``fetch[idx]`` decodes the images ``idx`` names (in a
    DataLoader worker process, one batch per worker at a time)."""

    def __init__(self, files: ImageFiles) -> None:
        self.files = ImageFiles(files.keys, files.decode, channels=files.channels, size=files.size, workers=1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx: torch.Tensor | slice) -> torch.Tensor:
        return self.files[idx]


def spans(n: int, batch_size: int) -> list[slice]:
    """Consecutive batches over ``n`` items, in order (for evaluation)."""
    return [slice(start, start + batch_size) for start in range(0, n, batch_size)]


def load_batches(images: Images, index_batches: Iterable[torch.Tensor | slice], *, pin_memory: bool = False
                 ) -> Iterator[torch.Tensor]:
    """The images of each index batch, in order. Held images are indexed directly; streamed ones are decoded by a
    ``torch.utils.data.DataLoader`` with ``workers`` processes that decode the next batches while the model
    computes (pinned memory for a GPU). A pass of one batch is decoded in this process (a worker would cost more to
    start than it saves)."""
    if not isinstance(images, ImageFiles):
        for idx in index_batches:
            yield images[idx]
        return
    order = list(index_batches)  # the caller's index generator is consumed now, as a direct loop would
    workers = min(images.workers, len(order), len(os.sched_getaffinity(0))) if len(order) > 1 else 0
    if workers == 0:
        for idx in order:
            yield images[idx]
        return
    loader = torch.utils.data.DataLoader(_BatchFetch(images), sampler=order, batch_size=None, num_workers=workers,
                                         pin_memory=pin_memory)
    yield from loader


@dataclass(frozen=True)
class ImageSet:
    """Images and integer labels of one split.

    Attributes:
        images: uint8 (N, C, H, W): a tensor, or ``ImageFiles`` that decode what is indexed (a streamed folder).
        labels: int64 tensor (N,), values index ``classes``.
    """

    images: Images
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> ImageSet:
        images = self.images.take(indices) if isinstance(self.images, ImageFiles) else self.images[indices]
        return ImageSet(images, self.labels[indices])

    @staticmethod
    def join(*sets: ImageSet) -> ImageSet:
        """The sets one after another (streamed sets stay streamed)."""
        images = [s.images for s in sets]
        if all(isinstance(x, ImageFiles) and x.decode is images[0].decode for x in images):
            joined: Images = images[0]
            for more in images[1:]:
                joined = joined.concat(more)
        else:
            joined = torch.cat([x if isinstance(x, torch.Tensor) else x[:] for x in images])
        return ImageSet(joined, torch.cat([s.labels for s in sets]))


@dataclass(frozen=True)
class Dataset:
    """A train and a test split over one list of class names."""

    name: str
    train: ImageSet
    test: ImageSet
    classes: list[str]
    #: with a validation split: which images of the file's training split ``train`` holds (to align per-image
    #: data such as teacher embeddings); None: all of them
    train_index: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]


def for_model(config: DataConfig, model: dict[str, Any] | None) -> DataConfig:
    """``config`` with the decoding size and filter it leaves open taken from the model it feeds (a checkpoint's
    recorded model config, or the one about to be built)."""
    model = model or {}
    return replace(config, image_size=config.image_size or model.get("image_size"),
                   interpolation=config.interpolation or model.get("interpolation"))


def load_dataset(config: DataConfig) -> Dataset:
    """Load the data set that ``config.dataset`` names (with ``data.validation``, its validation split in place of
    the test split).

    Raises:
        GSLoRAError: the data set is missing, unreadable or malformed.
    """
    dataset = _load(config)
    return validation_split(dataset, config.validation, config.validation_seed) if config.validation else dataset


def validation_split(dataset: Dataset, share: float, seed: int) -> Dataset:
    """``share`` of each class's training images (a seeded draw; at least one of a class with two or more) as the
    evaluation split, the rest as the training split; the test split is left out."""
    generator = torch.Generator().manual_seed(seed)
    held, kept = [], []
    for c in range(dataset.num_classes):
        idx = torch.nonzero(dataset.train.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n = max(1, round(share * len(idx))) if len(idx) > 1 else 0
        held.append(idx[:n])
        kept.append(idx[n:])
    held_idx, kept_idx = torch.cat(held).sort().values, torch.cat(kept).sort().values
    return Dataset(f"{dataset.name} (validation {share:g})", dataset.train.subset(kept_idx),
                   dataset.train.subset(held_idx), dataset.classes, train_index=kept_idx)


def _load(config: DataConfig) -> Dataset:
    if config.dataset.lower() in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return load_fashion_mnist(config.root)
    path = Path(config.dataset)
    if not path.exists():
        raise GSLoRAError(f"data path {str(path)!r} does not exist; pass 'fashion-mnist', an .npz file, an "
                          "ImageFolder directory or a Hugging Face save_to_disk directory")
    if path.is_file():
        if path.suffix != ".npz":
            raise GSLoRAError(f"data file {str(path)!r} is not an .npz file; pass an .npz with "
                              "x_train, y_train, x_test, y_test, classes or an ImageFolder directory")
        return load_npz(path, stream=config.stream, workers=config.workers)
    decoding = {"image_size": config.image_size or DEFAULT_IMAGE_SIZE, "interpolation": config.interpolation,
                "stream": config.stream, "workers": config.workers}
    if is_hf_dataset(path):
        return load_hf_dataset(path, **decoding)
    return load_image_folder(path, **decoding)


def _resize(image_size: int, interpolation: str | None) -> Callable[[Any], torch.Tensor]:
    """PIL image -> uint8 (C, image_size, image_size) with the given filter (bilinear when None)."""
    from torchvision.transforms import InterpolationMode, v2

    mode = InterpolationMode(interpolation or "bilinear")
    return v2.Compose([v2.PILToTensor(), v2.Resize((image_size, image_size), interpolation=mode,
                                                    antialias=mode != InterpolationMode.NEAREST)])


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise GSLoRAError(f"{path} is not a uint8 IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(root: str | Path = "/usr/share/datasets/fashion-mnist") -> Dataset:
    """Fashion-MNIST from the gzipped IDX files of Debian's ``dataset-fashion-mnist`` package."""
    root = Path(root)
    missing = [name for pair in FASHION_MNIST_FILES.values() for name in pair if not (root / name).is_file()]
    if missing:
        raise GSLoRAError(f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}); install Debian's "
                          "package with `apt-get install dataset-fashion-mnist` or set data.root")
    splits = {}
    for split, (images_file, labels_file) in FASHION_MNIST_FILES.items():
        images = torch.from_numpy(_read_idx(root / images_file).copy()).unsqueeze(1)
        labels = torch.from_numpy(_read_idx(root / labels_file).astype(np.int64))
        splits[split] = ImageSet(images, labels)
    return Dataset("fashion-mnist", splits["train"], splits["test"], list(FASHION_MNIST_CLASSES))


def _to_nchw(x: np.ndarray, path: Path, key: str) -> torch.Tensor:
    if x.dtype != np.uint8:
        raise GSLoRAError(f"{path}: {key} must be uint8 images, got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    else:
        raise GSLoRAError(f"{path}: {key} must have shape (N, H, W) or (N, H, W, C), got {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x))


def _stored_npy(path: Path, member: str) -> np.ndarray | None:
    """A memory map of ``member`` (an .npy inside the .npz) when the archive stores it uncompressed
    (``numpy.savez``), else None (``savez_compressed`` must be inflated)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{member}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the local file header: its name and extra field lengths are at bytes 26..29
        f.seek(info.header_offset + 30 + struct.unpack("<H", local[26:28])[0] + struct.unpack("<H", local[28:30])[0])
        version = np.lib.format.read_magic(f)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            return None
        shape, fortran, dtype = readers[version](f)
        if dtype.hasobject or fortran:
            return None
        return np.memmap(path, dtype=dtype, mode="c", offset=f.tell(), shape=shape, order="F" if fortran else "C")


def load_npz(path: str | Path, *, stream: str = "auto", workers: int = 4) -> Dataset:
    """A data set stored as ``x_train, y_train, x_test, y_test, classes`` (the ../shared/data format).

    Images are held in memory, or, with ``stream`` (``true``; ``auto`` past 2 GiB) and an archive written by
    ``numpy.savez`` (uncompressed, square images), memory-mapped and copied per batch: memory does not grow with
    the file. A compressed archive is always inflated into memory.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = {"x_train", "y_train", "x_test", "y_test", "classes"} - set(npz.files)
            if missing:
                raise GSLoRAError(f"{path} lacks {', '.join(sorted(missing))}; an .npz data set needs x_train, "
                                  "y_train, x_test, y_test and classes")
            mapped = {k: _stored_npy(path, k) for k in ("x_train", "x_test")} if stream != "false" else {}
            arrays = {k: mapped.get(k) if mapped.get(k) is not None else npz[k]
                      for k in ("x_train", "y_train", "x_test", "y_test", "classes")}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise GSLoRAError(f"cannot read {path} as .npz ({type(exc).__name__}: {exc}); the file is truncated or not "
                          "an .npz archive: re-create it with numpy.savez") from exc
    classes = [str(c) for c in arrays["classes"].tolist()]

    def decode(key: tuple[str, int]) -> torch.Tensor:  # one decoder for both splits, so their subsets can be joined
        return _to_nchw(np.asarray(arrays[key[0]][key[1]:key[1] + 1]), path, key[0])[0]

    if len(set(classes)) != len(classes) or not classes:
        raise GSLoRAError(f"{path}: classes must be a non-empty list of distinct names, got {classes[:5]}")
    splits = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if y.ndim != 1 or len(x) != len(y):
            raise GSLoRAError(f"{path}: x_{split} holds {len(x)} images but y_{split} has {len(y) if y.ndim else 0} "
                              f"labels (shape {y.shape}); they must be aligned one label per image")
        if not np.issubdtype(y.dtype, np.integer):
            raise GSLoRAError(f"{path}: y_{split} must hold integer labels, got {y.dtype}")
        labels = torch.from_numpy(y.astype(np.int64))
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(classes)):
            raise GSLoRAError(f"{path}: y_{split} has labels outside 0..{len(classes) - 1}")
        key, x = f"x_{split}", arrays[f"x_{split}"]
        images = _to_nchw(np.asarray(x[:0]), path, key)  # the dtype and shape checks, on no rows yet
        streamed = isinstance(x, np.memmap) and images.shape[2] == images.shape[3] and (
            stream == "true" or x.nbytes > STREAM_AUTO_BYTES)
        if streamed:
            log.info("memory-mapping %d images of %s (%s)", len(x), path, key)
            images = ImageFiles([(key, row) for row in range(len(x))], decode, channels=images.shape[1],
                                size=images.shape[2], workers=workers)
        else:
            images = _to_nchw(np.asarray(x), path, key)
        splits[split] = ImageSet(images, labels)
    return Dataset(path.stem, splits["train"], splits["test"], classes)


def load_image_folder(root: str | Path, *, image_size: int = DEFAULT_IMAGE_SIZE, interpolation: str | None = None,
                      stream: str = "auto", workers: int = 4) -> Dataset:
    """An ImageFolder tree ``root/{train,test}/<class>/<image>``; images are resized to ``image_size``.

    ``val/`` is accepted in place of ``test/``. Both splits must have the same class folders. ``stream``: ``true``
    keeps only the file paths in memory and decodes each batch when it is used (``ImageFiles``), ``false`` decodes
    everything now, ``auto`` streams when the decoded images would take more than 2 GiB.
    """
    from torchvision.datasets import ImageFolder

    root = Path(root)
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise GSLoRAError(f"{root} is not an ImageFolder data set: it needs train/ and test/ (or val/) "
                          "sub-directories with one folder of images per class")
    transform = _resize(image_size, interpolation)

    def decode(path: str) -> torch.Tensor:  # one decoder for both splits, so their streamed subsets can be joined
        return transform(_rgb_loader(path))

    splits, classes = {}, None
    for split, directory in (("train", root / "train"), ("test", test_dir)):
        try:
            folder = ImageFolder(str(directory), transform=transform, loader=_rgb_loader)
        except (FileNotFoundError, OSError) as exc:
            raise GSLoRAError(f"cannot read ImageFolder {directory}: {exc}") from exc
        if classes is not None and folder.classes != classes:
            raise GSLoRAError(f"{directory} has other class folders than {root / 'train'}; both splits need the "
                              "same classes")
        classes = folder.classes
        labels = torch.tensor(folder.targets, dtype=torch.int64)
        files = ImageFiles([path for path, _ in folder.samples], decode, channels=3, size=image_size, workers=workers)
        splits[split] = _held_or_streamed(files, labels, stream, str(directory))
    return Dataset(root.name, splits["train"], splits["test"], list(classes or []))


def _held_or_streamed(files: ImageFiles, labels: torch.Tensor, stream: str, where: str) -> ImageSet:
    streamed = stream == "true" or (stream == "auto" and 3 * files.size ** 2 * len(files) > STREAM_AUTO_BYTES)
    log.info("%s %d images from %s", "streaming" if streamed else "loading", len(files), where)
    return ImageSet(files if streamed else files[:], labels)


def is_hf_dataset(path: Path) -> bool:
    """A Hugging Face ``DatasetDict`` written by ``save_to_disk``."""
    return (path / "dataset_dict.json").is_file()


def load_hf_dataset(root: str | Path, *, image_size: int = DEFAULT_IMAGE_SIZE, interpolation: str | None = None,
                    stream: str = "auto", workers: int = 4) -> Dataset:
    """A Hugging Face ``datasets`` ``DatasetDict`` saved with ``save_to_disk`` (``load_from_disk``, memory-mapped
    Arrow): its ``train`` and ``test`` (or ``validation``) splits, the first ``Image`` column and the first
    ``ClassLabel`` column (whose names are the classes); images resized to ``image_size``, streamed as for an
    ImageFolder."""
    import datasets

    root = Path(root)
    try:
        data = datasets.load_from_disk(str(root))
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise GSLoRAError(f"cannot read the Hugging Face data set {str(root)!r}: {exc}") from exc
    test_split = next((s for s in ("test", "validation") if s in data), None)
    if "train" not in data or test_split is None:
        raise GSLoRAError(f"{root} has splits {sorted(data)}; gslora needs 'train' and 'test' (or 'validation')")
    features = data["train"].features
    image = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    label = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    if image is None or label is None:
        raise GSLoRAError(f"{root} needs an Image column and a ClassLabel column (it has "
                          f"{', '.join(f'{k}: {type(f).__name__}' for k, f in features.items())})")
    transform = _resize(image_size, interpolation)
    parts = {"train": data["train"], "test": data[test_split]}

    def decode(key: tuple[str, int]) -> torch.Tensor:
        return transform(parts[key[0]][key[1]][image].convert("RGB"))

    splits = {}
    for split, part in parts.items():
        files = ImageFiles([(split, i) for i in range(len(part))], decode, channels=3, size=image_size,
                           workers=workers)
        labels = torch.tensor(part[label], dtype=torch.int64)
        splits[split] = _held_or_streamed(files, labels, stream, f"{root} ({split})")
    return Dataset(root.name, splits["train"], splits["test"], list(features[label].names))


def _rgb_loader(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:  # PIL raises SyntaxError for some corrupt files
        raise GSLoRAError(f"cannot decode image {path!r} ({type(exc).__name__}); remove or replace the file") from exc


def load_embeddings(path: str | Path, key: str = "train") -> torch.Tensor:
    """A (N, D) float array ``key`` from an ``.npz`` file, for example teacher embeddings per training image."""
    try:
        with np.load(path) as npz:
            if key not in npz.files:
                raise GSLoRAError(f"{path} has no array {key!r} (it has {', '.join(npz.files)}); set distill.key")
            return torch.from_numpy(npz[key].astype(np.float32))
    except (OSError, ValueError) as exc:
        raise GSLoRAError(f"cannot read embeddings {str(path)!r}: {exc}") from exc
