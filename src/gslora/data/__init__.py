"""Data sets, class orders, erasure-request sequences and per-request subsets."""

from gslora.data.datasets import (
    Dataset,
    ImageFiles,
    ImageSet,
    for_model,
    load_batches,
    load_dataset,
    load_embeddings,
    load_fashion_mnist,
    load_image_folder,
    load_npz,
    spans,
)
from gslora.data.tasks import (
    Request,
    RequestData,
    build_requests,
    class_order,
    old_indices,
    request_data,
    resolve_classes,
    sample_per_class,
)

__all__ = [
    "Dataset", "ImageFiles", "ImageSet", "Request", "RequestData", "build_requests", "class_order", "for_model",
    "load_batches", "load_dataset", "load_embeddings", "load_fashion_mnist", "load_image_folder", "load_npz",
    "old_indices", "request_data", "resolve_classes", "sample_per_class", "spans",
]
