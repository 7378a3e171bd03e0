"""Detection data: COCO-format splits held in memory, and scenes composed from Fashion-MNIST items.

A detection data set is a directory (or explicit paths) with a COCO annotation file and an image
folder per split::

    <dir>/train.json  <dir>/train/*.png      (COCO: images, annotations with bbox [x, y, w, h], categories)
    <dir>/test.json   <dir>/test/*.png

Images are resized to a square ``image_size`` when loaded (boxes scaled with them) so that a split is
one uint8 tensor; boxes are kept as (x0, y0, x1, y1) pixels of the resized image.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gslora.config import require
from gslora.errors import GSLoRAError
from gslora.io import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

SCENES = "fashion-mnist-scenes"


@dataclass(frozen=True)
class DetectionSet:
    """Images and their objects.

    Attributes:
        images: uint8 (N, C, S, S).
        labels: per image, int64 (n_i,) class indices.
        boxes: per image, float (n_i, 4) boxes (x0, y0, x1, y1) in pixels.
        held_labels, held_boxes: per image, objects that are not targets but that a method may still use
            (``keep_classes(..., held=...)``: objects of classes forgotten by earlier requests inside a
            request's retain images); None when nothing was set aside.
    """

    images: torch.Tensor
    labels: list[torch.Tensor]
    boxes: list[torch.Tensor]
    held_labels: list[torch.Tensor] | None = None
    held_boxes: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor | list[int]) -> DetectionSet:
        idx = [int(i) for i in indices]
        held = (None, None) if self.held_labels is None else \
            ([self.held_labels[i] for i in idx], [self.held_boxes[i] for i in idx])
        return DetectionSet(self.images[idx], [self.labels[i] for i in idx], [self.boxes[i] for i in idx], *held)

    def keep_classes(self, classes: set[int], *, held: set[int] = frozenset()) -> DetectionSet:
        """The same images with only the objects of ``classes``; with ``held``, the objects of those classes are
        set aside in ``held_labels`` / ``held_boxes`` instead of dropped."""
        def objects_of(wanted: set[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            masks = [torch.tensor([int(c) in wanted for c in lab], dtype=torch.bool) for lab in self.labels]
            return [lab[m] for lab, m in zip(self.labels, masks)], [box[m] for box, m in zip(self.boxes, masks)]

        return DetectionSet(self.images, *objects_of(classes), *(objects_of(held) if held else (None, None)))


@dataclass(frozen=True)
class DetectionDataset:
    name: str
    train: DetectionSet
    test: DetectionSet
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class DetectionDataConfig:
    """Where the detection data come from.

    Args:
        dataset: ``fashion-mnist-scenes`` (composed on first use under ``root``) or a directory with
            ``train.json``, ``train/``, ``test.json`` and ``test/``.
        root: where composed scenes are written (and read back on later runs).
        image_size: square size images are resized to.
        train_json, train_images, test_json, test_images: explicit COCO paths (override ``dataset``),
            for example COCO 2017's ``instances_train2017.json`` and ``train2017/``.
        scenes_train, scenes_test, objects, seed: the composed data set's size, objects per scene
            (min, max) and seed.
    """

    dataset: str = SCENES
    root: str = ".cache/data/fashion-mnist-scenes"
    image_size: int = 64
    train_json: str | None = None
    train_images: str | None = None
    test_json: str | None = None
    test_images: str | None = None
    scenes_train: int = 6000
    scenes_test: int = 1000
    objects: list[int] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.image_size >= 32, "data.image_size", self.image_size, "must be >= 32")
        require(self.scenes_train >= 1 and self.scenes_test >= 1, "data.scenes_train", self.scenes_train,
                "scenes_train and scenes_test must be >= 1")
        objects = self.objects or [1, 3]
        require(len(objects) == 2 and 1 <= objects[0] <= objects[1] <= 6, "data.objects", self.objects,
                "must be [min, max] objects per scene, 1 <= min <= max <= 6")


def _tight_box(item: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(item > 20)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def compose_scenes(images: torch.Tensor, labels: torch.Tensor, n: int, *, size: int = 64,
                   objects: tuple[int, int] = (1, 3), seed: int = 0) -> DetectionSet:
    """Paste real item images (N, 1, 28, 28) on black ``size`` x ``size`` canvases, each at a random
    scale (16-28 px) and place without overlapping another item's box; boxes are the items' tight
    boxes (pixels brighter than 20). Deterministic for a seed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    canvases = np.zeros((n, size, size), dtype=np.uint8)
    all_labels, all_boxes = [], []
    for i in range(n):
        placed: list[tuple[int, int, int, int]] = []
        labs, boxes = [], []
        for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
            for _attempt in range(20):
                k = int(rng.integers(len(labels)))
                scale = int(rng.integers(16, 29))
                item = np.asarray(Image.fromarray(images[k, 0].numpy()).resize((scale, scale), Image.BILINEAR))
                box = _tight_box(item)
                if box is None:
                    continue
                x, y = int(rng.integers(0, size - scale + 1)), int(rng.integers(0, size - scale + 1))
                b = (x + box[0], y + box[1], x + box[2], y + box[3])
                if any(b[0] < p[2] and p[0] < b[2] and b[1] < p[3] and p[1] < b[3] for p in placed):
                    continue
                region = canvases[i, y:y + scale, x:x + scale]
                np.maximum(region, item, out=region)
                placed.append(b)
                labs.append(int(labels[k]))
                boxes.append(b)
                break
        all_labels.append(torch.tensor(labs, dtype=torch.int64))
        all_boxes.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    return DetectionSet(torch.from_numpy(canvases).unsqueeze(1), all_labels, all_boxes)


def write_coco(split: DetectionSet, classes: list[str], json_path: Path, image_dir: Path) -> None:
    """Write a split as PNG files and a COCO annotation file."""
    from PIL import Image

    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(len(split)):
        name = f"{i:06d}.png"
        pixels = split.images[i].numpy()
        Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)).save(image_dir / name)
        images.append({"id": i + 1, "file_name": name, "height": pixels.shape[1], "width": pixels.shape[2]})
        for lab, (x0, y0, x1, y1) in zip(split.labels[i].tolist(), split.boxes[i].tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": lab + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(classes)]
    atomic_write_json(json_path, {"images": images, "annotations": annotations, "categories": categories})


def load_coco(json_path: str | Path, image_dir: str | Path, *, image_size: int,
              classes: list[str] | None = None) -> tuple[DetectionSet, list[str]]:
    """Read a COCO split; categories map to class indices in their ``id`` order (or by name to ``classes``).

    Crowd annotations are skipped; images keep their objects of every category.
    """
    from PIL import Image

    json_path, image_dir = Path(json_path), Path(image_dir)
    try:
        coco = json.loads(json_path.read_text())
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        entries, annotations = coco["images"], coco.get("annotations", [])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise GSLoRAError(f"cannot read COCO annotations {str(json_path)!r} ({exc}); it needs images, annotations "
                          "and categories") from exc
    names = [c["name"] for c in categories]
    if classes is not None and names != classes:
        raise GSLoRAError(f"{json_path} has categories {names[:5]}... but the training split has {classes[:5]}...; "
                          "both splits need the same categories")
    index = {c["id"]: i for i, c in enumerate(categories)}
    by_image: dict[int, list[dict]] = {}
    for a in annotations:
        if not a.get("iscrowd", 0):
            by_image.setdefault(a["image_id"], []).append(a)
    pixels, labels, boxes = [], [], []
    for entry in entries:
        path = image_dir / entry["file_name"]
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
                w, h = rgb.size
                pixels.append(np.asarray(rgb.resize((image_size, image_size), Image.BILINEAR)).transpose(2, 0, 1))
        except OSError as exc:
            raise GSLoRAError(f"cannot read image {str(path)!r} listed in {json_path} ({exc})") from exc
        sx, sy = image_size / w, image_size / h
        objs = by_image.get(entry["id"], [])
        labels.append(torch.tensor([index[a["category_id"]] for a in objs], dtype=torch.int64))
        boxes.append(torch.tensor([[a["bbox"][0] * sx, a["bbox"][1] * sy, (a["bbox"][0] + a["bbox"][2]) * sx,
                                    (a["bbox"][1] + a["bbox"][3]) * sy] for a in objs],
                                  dtype=torch.float32).reshape(-1, 4))
    if not pixels:
        raise GSLoRAError(f"{json_path} lists no images")
    return DetectionSet(torch.from_numpy(np.stack(pixels)), labels, boxes), names


def ensure_scenes(config: DetectionDataConfig) -> Path:
    """Compose the Fashion-MNIST scene data set under ``config.root`` unless scenes of this very config are there
    already (other counts, seed, objects or size are composed anew in their place)."""
    root = Path(config.root)
    objects = tuple(config.objects or [1, 3])
    wanted = {"scenes_train": config.scenes_train, "scenes_test": config.scenes_test, "objects": list(objects),
              "seed": config.seed, "image_size": config.image_size}
    if (root / "test.json").is_file():
        try:
            if json.loads((root / "README.json").read_text()).get("config") == wanted:
                return root
        except (OSError, json.JSONDecodeError):
            pass
    from gslora.config import DataConfig
    from gslora.data import load_dataset

    fashion = load_dataset(DataConfig())
    log.info("composing %d + %d Fashion-MNIST scenes under %s", config.scenes_train, config.scenes_test, root)
    with atomic_directory(root, replace=root.exists()) as tmp:
        for split, source, n, seed in (("train", fashion.train, config.scenes_train, config.seed),
                                       ("test", fashion.test, config.scenes_test, config.seed + 1)):
            scenes = compose_scenes(source.images, source.labels, n, size=config.image_size, objects=objects,
                                    seed=seed)
            write_coco(scenes, fashion.classes, tmp / f"{split}.json", tmp / split)
        atomic_write_json(tmp / "README.json", {"source": "Debian dataset-fashion-mnist", "config": wanted})
    return root


def load_detection_dataset(config: DetectionDataConfig) -> DetectionDataset:
    """Load the train and test splits the config names (composing the scenes first if needed)."""
    if config.train_json:
        paths = (config.train_json, config.train_images, config.test_json, config.test_images)
        if not all(paths):
            raise GSLoRAError("data.train_json needs data.train_images, data.test_json and data.test_images too")
        name = Path(config.train_json).stem
    else:
        root = ensure_scenes(config) if config.dataset == SCENES else Path(config.dataset)
        if not (root / "train.json").is_file():
            raise GSLoRAError(f"detection data set {config.dataset!r}: no {root / 'train.json'}; pass "
                              f"{SCENES} or a directory with train.json, train/, test.json and test/")
        paths = (root / "train.json", root / "train", root / "test.json", root / "test")
        name = config.dataset if config.dataset == SCENES else root.name
    train, classes = load_coco(paths[0], paths[1], image_size=config.image_size)
    test, _ = load_coco(paths[2], paths[3], image_size=config.image_size, classes=classes)
    return DetectionDataset(name, train, test, classes)


def images_with(split: DetectionSet, classes: set[int]) -> list[int]:
    """Indices of images holding at least one object of ``classes``."""
    return [i for i, lab in enumerate(split.labels) if any(int(c) in classes for c in lab)]
