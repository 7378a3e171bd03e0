"""Seconds per optimisation step: GS-LoRA (rank-8 LoRA on the FFNs) vs full fine-tuning (head frozen).

Usage: python benchmarks/step_cost/run.py [--device auto|cpu|cuda] [--steps N]

Explains the time columns of the baseline comparisons: on the same batches and step counts, LoRA saves
the weight-gradient products of the frozen layers and the optimiser update of their weights, but not
the forward pass nor the backward pass through the activations. Two model sizes: the Fashion-MNIST
benchmark's ViT (depth 4, width 128, 28x28, batch 48 + 48) and a ViT-B/16 shape (depth 12, width 768,
224x224, batch 8 + 8; random weights, same cost). Writes results.json and report.md here.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import setup_logging, write_results  # noqa: E402

from gslora.config import ModelConfig, TrainConfig, to_dict  # noqa: E402
from gslora.data import ImageSet, Request  # noqa: E402
from gslora.engine.loop import make_optimizer, optimizer_step, resolve_device  # noqa: E402
from gslora.engine.provenance import stamp  # noqa: E402
from gslora.methods import METHODS, TaskContext  # noqa: E402
from gslora.models import build_model  # noqa: E402

SHAPES = {
    "fashion_mnist_vit": ({"depth": 4, "width": 128, "heads": 4, "patch_size": 7, "image_size": 28, "in_chans": 1,
                           "num_classes": 10}, 48),
    "vit_b16_shape": ({"depth": 12, "width": 768, "heads": 12, "patch_size": 16, "image_size": 224, "in_chans": 3,
                       "num_classes": 100}, 8),
}
METHOD_SPECS = {"gs_lora": {"bnd": 10.0}, "random_label": {}, "retrain": {}}


def time_method(name: str, model, batch: int, steps: int, device: torch.device) -> dict:
    cls = METHODS.get(name)
    method = cls(cls.config_class(**METHOD_SPECS[name]))
    size, chans = model.config.image_size, model.config.in_chans
    x = torch.randint(0, 255, (2 * batch, chans, size, size), dtype=torch.uint8)
    y = torch.arange(2 * batch) % model.config.num_classes
    forget, retain = (x[:batch], torch.zeros(batch, dtype=torch.long)), (x[batch:], 1 + y[batch:] % 9)
    task = TaskContext(Request(0, (0,), tuple(range(1, 10)), ()), 1, steps, ImageSet(*forget), ImageSet(*retain),
                       device=device)
    method.setup_task(model, task)
    params = method.trainable_parameters()
    optimizer = make_optimizer(params, TrainConfig(lr=1e-4))
    forget = tuple(t.to(device) for t in forget)
    retain = tuple(t.to(device) for t in retain)
    times = []
    for step in range(steps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        terms = method.training_step(forget, retain, epoch=0)
        optimizer_step(optimizer, terms["loss"], params, 0.0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 2:  # two warm-up steps
            times.append(time.perf_counter() - start)
    return {"seconds_per_step": sum(times) / len(times), "trainable_parameters": sum(p.numel() for p in params),
            **stamp(), "config": {"method": {"name": name, **METHOD_SPECS[name]}, "batch": batch, "steps": steps,
                                  "model": to_dict(model.config)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    setup_logging()
    device = resolve_device(args.device)
    results: dict = {"shapes": {}}
    lines = ["# step_cost", "", "Seconds per optimisation step on the same batch (forget + retained).", "",
             "| model | batch | method | trainable parameters | s / step | vs gs_lora |", "|---|---|---|---|---|---|"]
    for shape, (model_kw, batch) in SHAPES.items():
        torch.manual_seed(0)
        model = build_model(ModelConfig(**model_kw)).to(device)
        rows = {name: time_method(name, copy.deepcopy(model), batch, args.steps, device) for name in METHOD_SPECS}
        base = rows["gs_lora"]["seconds_per_step"]
        for name, row in rows.items():
            row["over_gs_lora"] = row["seconds_per_step"] / base
            lines.append(f"| {shape} | {batch} + {batch} | {name} | {row['trainable_parameters']:,} | "
                         f"{row['seconds_per_step']:.3f} | {row['over_gs_lora']:.2f}x |")
        results["shapes"][shape] = {"model": model_kw, "batch": batch,
                                    "parameters": sum(p.numel() for p in model.parameters()), "methods": rows}
    write_results(HERE, results, {"steps": args.steps, "methods": METHOD_SPECS, "device": str(device)})
    (HERE / "report.md").write_text("\n".join(lines) + "\n")
    print((HERE / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
