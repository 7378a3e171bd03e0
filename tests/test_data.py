"""Data loading, class order, request sequences and per-request subsets."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from gslora.config import DataConfig, SequenceConfig
from gslora.data import (
    build_requests,
    class_order,
    load_dataset,
    load_fashion_mnist,
    request_data,
    resolve_classes,
    sample_per_class,
)
from gslora.errors import GSLoRAError
from tests.conftest import SHARED_DATA, make_npz, requires_fashion


def test_class_order_is_the_reference_shuffle():
    expected = list(range(100))
    random.seed(1337)
    random.shuffle(expected)
    assert class_order(100, 1337) == expected
    assert class_order(100, 1) != expected


def test_protocol_requests_follow_the_reference_slices():
    classes = [str(i) for i in range(100)]
    order = class_order(100, 1337)
    requests = build_requests(SequenceConfig(num_requests=4, classes_per_request=20), classes)
    for t, r in enumerate(requests):
        assert list(r.forget) == order[80 - 20 * t: 100 - 20 * t]
        assert set(r.retain) == set(order[0: 80 - 20 * t])
        assert set(r.old) == set(order[100 - 20 * t: 100])


def test_explicit_requests_by_name_and_id():
    classes = ["cat", "dog", "bird", "fish"]
    requests = build_requests(SequenceConfig(requests=[["Dog", 3], ["cat"]]), classes)
    assert requests[0].forget == (1, 3) and requests[0].retain == (0, 2) and requests[0].old == ()
    assert requests[1].forget == (0,) and requests[1].retain == (2,) and requests[1].old == (1, 3)


@pytest.mark.parametrize("tokens, message", [(["zebra"], "unknown class 'zebra'"), ([7], "unknown class 7"),
                                             (["cat", "0"], "same class twice")])
def test_resolve_classes_errors(tokens, message):
    with pytest.raises(GSLoRAError, match=message):
        resolve_classes(tokens, ["cat", "dog"])


def test_already_forgotten_and_nothing_retained_are_errors():
    classes = ["a", "b", "c"]
    with pytest.raises(GSLoRAError, match="already forgotten"):
        build_requests(SequenceConfig(requests=[["a"]]), classes, forgotten=[0])
    with pytest.raises(GSLoRAError, match="no class to retain"):
        build_requests(SequenceConfig(requests=[["a", "b", "c"]]), classes)
    with pytest.raises(GSLoRAError, match="would forget all"):
        build_requests(SequenceConfig(num_requests=3, classes_per_request=1), classes)


def test_sampling_by_ratio_and_by_shots_is_exact_and_seeded():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 3)
    by_ratio = sample_per_class(labels, [0, 1, 2], ratio=0.1, seed=5)
    assert [int((labels[by_ratio] == c).sum()) for c in range(3)] == [5, 3, 1]
    shots = sample_per_class(labels, [0, 1], shots=4, seed=5)
    assert [int((labels[shots] == c).sum()) for c in range(2)] == [4, 4]
    assert torch.equal(shots, sample_per_class(labels, [0, 1], shots=4, seed=5))
    assert not torch.equal(shots, sample_per_class(labels, [0, 1], shots=4, seed=6))
    assert set(labels[sample_per_class(labels, [1], ratio=1.0)].tolist()) == {1}


def test_request_data_rejects_empty_forget_and_retain(tmp_path):
    path = make_npz(tmp_path / "d.npz", per_class_train=[5, 0, 5])
    dataset = load_dataset(DataConfig(dataset=str(path)))
    with pytest.raises(GSLoRAError, match="forget classes \\(class_1\\) have no training images"):
        request_data(dataset, build_requests(SequenceConfig(requests=[["class_1"]]), dataset.classes)[0],
                     SequenceConfig())
    with pytest.raises(GSLoRAError, match="retained classes have no training images"):
        request_data(dataset, build_requests(SequenceConfig(requests=[["class_0", "class_2"]]), dataset.classes)[0],
                     SequenceConfig())


def test_npz_loader_shapes_and_errors(tmp_path):
    dataset = load_dataset(DataConfig(dataset=str(make_npz(tmp_path / "d.npz", per_class_train=[4, 4]))))
    assert dataset.train.images.shape == (8, 1, 28, 28) and dataset.train.images.dtype == torch.uint8
    assert dataset.classes == ["class_0", "class_1"]
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(GSLoRAError, match="lacks classes, x_test, y_test, y_train"):
        load_dataset(DataConfig(dataset=str(tmp_path / "bad.npz")))
    with pytest.raises(GSLoRAError, match="does not exist"):
        load_dataset(DataConfig(dataset=str(tmp_path / "missing")))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(GSLoRAError, match="is not an .npz file"):
        load_dataset(DataConfig(dataset=str(tmp_path / "notes.txt")))


def test_image_folder_loader(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("ant", "bee"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                image = Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
                image.save(tmp_path / split / cls / f"{i}.png")
    dataset = load_dataset(DataConfig(dataset=str(tmp_path), image_size=16))
    assert dataset.classes == ["ant", "bee"]
    assert dataset.train.images.shape == (6, 3, 16, 16) and dataset.test.labels.tolist() == [0, 0, 1, 1]
    (tmp_path / "test" / "bee").rename(tmp_path / "test" / "wasp")
    with pytest.raises(GSLoRAError, match="other class folders"):
        load_dataset(DataConfig(dataset=str(tmp_path), image_size=16))


def test_a_streamed_image_folder_decodes_the_same_tensors_only_when_indexed(tmp_path):
    from PIL import Image

    from gslora.data import ImageFiles, ImageSet

    rng = np.random.default_rng(1)
    for split, n in (("train", 5), ("test", 2)):
        for cls in ("ant", "bee", "cat"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (37, 23, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    held = load_dataset(DataConfig(dataset=str(tmp_path), image_size=16, stream="false"))
    streamed = load_dataset(DataConfig(dataset=str(tmp_path), image_size=16, stream=True, workers=3))
    assert isinstance(streamed.train.images, ImageFiles) and isinstance(held.train.images, torch.Tensor)
    assert streamed.train.images.shape == held.train.images.shape == (15, 3, 16, 16)
    assert torch.equal(streamed.test.labels, held.test.labels)
    idx = torch.tensor([14, 0, 7, 7])
    assert torch.equal(streamed.train.images[idx], held.train.images[idx])
    assert torch.equal(streamed.train.images[2:9], held.train.images[2:9])
    assert torch.equal(streamed.train.images[3], held.train.images[3])
    sub = streamed.train.subset(torch.tensor([1, 4, 9]))  # a request's subset stays on disk
    assert isinstance(sub.images, ImageFiles) and len(sub.images.keys) == 3
    assert torch.equal(sub.images[:], held.train.subset(torch.tensor([1, 4, 9])).images)
    joined = ImageSet.join(sub, streamed.test)
    assert isinstance(joined.images, ImageFiles) and len(joined) == 9
    assert torch.equal(joined.images[:], torch.cat([held.train.images[[1, 4, 9]], held.test.images]))
    assert torch.equal(ImageSet.join(held.test, streamed.test).images, torch.cat([held.test.images] * 2))
    assert streamed.train.images[torch.tensor([], dtype=torch.int64)].shape == (0, 3, 16, 16)
    # batches through the DataLoader's worker processes: the same tensors, in the order asked for
    from gslora.data import load_batches, spans

    order = [torch.tensor([14, 0, 7]), torch.tensor([3]), torch.tensor([9, 9, 1, 2])]
    assert all(torch.equal(a, b) for a, b in zip(load_batches(streamed.train.images, order),
                                                  load_batches(held.train.images, order), strict=True))
    assert len(list(load_batches(streamed.train.images, order))) == 3
    assert torch.equal(torch.cat(list(load_batches(streamed.train.images, spans(15, 4)))), held.train.images)
    with pytest.raises(GSLoRAError, match="data.stream"):
        DataConfig(stream="sometimes")


def test_a_hugging_face_data_set_saved_to_disk_loads_held_or_streamed(fashion, tmp_path):
    import datasets

    from gslora.data import ImageFiles, ImageSet

    names = ["T-shirt/top", "Trouser", "Pullover"]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=names),
                                  "note": datasets.Value("string")})
    parts = {}
    for split, source, n in (("train", fashion.train, 6), ("validation", fashion.test, 3)):
        idx = torch.cat([torch.nonzero(source.labels == c).flatten()[:n] for c in range(3)])
        rows = {"img": [source.images[i, 0].numpy() for i in idx.tolist()], "label": source.labels[idx].tolist(),
                "note": ["x"] * len(idx)}
        parts[split] = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "hf"))
    held = load_dataset(DataConfig(dataset=str(tmp_path / "hf"), image_size=28, stream="false"))
    streamed = load_dataset(DataConfig(dataset=str(tmp_path / "hf"), image_size=28, stream="true"))
    assert held.classes == names and len(held.train) == 18 and len(held.test) == 9
    assert held.train.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    first = fashion.train.images[torch.nonzero(fashion.train.labels == 0).flatten()[0], 0]
    assert torch.equal(held.train.images[0, 0], first)  # grey pixels come back unchanged (as RGB)
    assert isinstance(streamed.train.images, ImageFiles)
    assert torch.equal(streamed.train.images[:], held.train.images)
    both = ImageSet.join(streamed.train.subset(torch.tensor([0, 17])), streamed.test)  # one decoder: stays lazy
    assert isinstance(both.images, ImageFiles) and torch.equal(both.images[:], torch.cat(
        [held.train.images[[0, 17]], held.test.images]))
    datasets.DatasetDict({"train": parts["train"]}).save_to_disk(str(tmp_path / "no_test"))
    with pytest.raises(GSLoRAError, match="needs 'train' and 'test'"):
        load_dataset(DataConfig(dataset=str(tmp_path / "no_test")))


def test_missing_fashion_mnist_names_the_debian_package(tmp_path):
    with pytest.raises(GSLoRAError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


@requires_fashion
def test_fashion_mnist_from_debian():
    dataset = load_fashion_mnist()
    assert len(dataset.train) == 60_000 and len(dataset.test) == 10_000
    assert dataset.image_shape == (1, 28, 28) and dataset.classes[9] == "Ankle boot"
    assert torch.bincount(dataset.test.labels).tolist() == [1000] * 10


@pytest.mark.skipif(not (SHARED_DATA / "olivetti_faces" / "olivetti_faces.npz").is_file(),
                    reason="../shared/data/olivetti_faces is not present (it is not part of the repository)")
def test_olivetti_npz_from_shared_data():
    dataset = load_dataset(DataConfig(dataset=str(SHARED_DATA / "olivetti_faces" / "olivetti_faces.npz")))
    assert dataset.num_classes == 40 and len(dataset.train) == 320 and len(dataset.test) == 80


def test_an_uncompressed_npz_is_memory_mapped_when_streamed_and_decodes_the_same_images(tmp_path):
    """numpy.savez stores members uncompressed: with data.stream=true its images stay in the file (rows copied per
    batch), the same tensors as held ones; a compressed archive cannot be mapped and is held."""
    from gslora.data import ImageFiles, ImageSet, load_batches

    rng = np.random.default_rng(3)
    arrays = {"x_train": rng.integers(0, 255, (12, 10, 10, 3), dtype=np.uint8), "y_train": np.arange(12) % 3,
              "x_test": rng.integers(0, 255, (6, 10, 10, 3), dtype=np.uint8), "y_test": np.arange(6) % 3,
              "classes": np.array(["a", "b", "c"])}
    np.savez(tmp_path / "plain.npz", **arrays)
    np.savez_compressed(tmp_path / "packed.npz", **arrays)
    held = load_dataset(DataConfig(dataset=str(tmp_path / "plain.npz"), stream="false"))
    mapped = load_dataset(DataConfig(dataset=str(tmp_path / "plain.npz"), stream="true", workers=2))
    packed = load_dataset(DataConfig(dataset=str(tmp_path / "packed.npz"), stream="true"))
    assert isinstance(mapped.train.images, ImageFiles) and isinstance(packed.train.images, torch.Tensor)
    assert held.train.images.shape == mapped.train.images.shape == (12, 3, 10, 10)
    assert torch.equal(mapped.train.images[:], held.train.images)
    assert torch.equal(packed.train.images, held.train.images)
    assert torch.equal(torch.cat(list(load_batches(mapped.test.images, [torch.tensor([5, 0]), torch.tensor([2])]))),
                       held.test.images[[5, 0, 2]])
    joined = ImageSet.join(mapped.train.subset(torch.tensor([1, 7])), mapped.test)  # one decoder: stays mapped
    assert isinstance(joined.images, ImageFiles)
    assert torch.equal(joined.images[:], torch.cat([held.train.images[[1, 7]], held.test.images]))


def test_a_validation_split_holds_out_a_seeded_share_of_each_class_in_place_of_the_test_split(tmp_path):
    """data.validation: the held-out images are training images (never the test split's), disjoint from what is
    trained on, the same for the same seed, and the share holds per class."""
    make_npz(tmp_path / "d.npz", per_class_train=[10, 20, 1], per_class_test=3)
    full = load_dataset(DataConfig(dataset=str(tmp_path / "d.npz")))
    split = load_dataset(DataConfig(dataset=str(tmp_path / "d.npz"), validation=0.2))
    again = load_dataset(DataConfig(dataset=str(tmp_path / "d.npz"), validation=0.2))
    other = load_dataset(DataConfig(dataset=str(tmp_path / "d.npz"), validation=0.2, validation_seed=1))
    assert [int((split.test.labels == c).sum()) for c in range(3)] == [2, 4, 0]  # a class of one image keeps it
    assert len(split.train) + len(split.test) == len(full.train) == 31
    assert sorted(split.train_index.tolist() + [i for i in range(31) if i not in split.train_index]) == list(range(31))
    held = torch.cat([split.train.images, split.test.images])
    assert sorted(map(bytes, (x.numpy().tobytes() for x in held))) == sorted(
        map(bytes, (x.numpy().tobytes() for x in full.train.images)))  # exactly the training images, once each
    assert torch.equal(split.test.images, again.test.images) and not torch.equal(split.test.images, other.test.images)
    assert torch.equal(split.train.images, full.train.images[split.train_index])
    with pytest.raises(GSLoRAError, match="data.validation"):
        DataConfig(validation=1.0)
