"""Scale: what a request costs on real backbone sizes, and what grows with what.

Usage: python benchmarks/scale/run.py [--device auto|cpu|cuda] [--steps N] [--quick]

1. Per step, timm ViT-Ti/16, ViT-S/16 and ViT-B/16 at 224 px (random weights: the cost does not depend on them),
   batch 8 + 8 on a CPU (32 + 32 on a GPU): seconds and peak memory of a GS-LoRA step vs full fine-tuning (every
   weight but the head trained: the cost a LoRA edit saves), fp32 vs bf16, and the engine's loop
   (``gslora.engine.loop.optimise``: data, autocast, finiteness checks, profile) against a bare PyTorch loop doing
   the same ``training_step`` / backward / AdamW step on the same batches. Each measurement runs in its own process,
   so its peak memory (``ru_maxrss`` on a CPU, ``max_memory_allocated`` on a GPU) is its own.
2. Whole requests through ``run_forgetting`` on Fashion-MNIST (the benchmark ViT, random weights, every request
   committed): seconds per step as earlier requests accumulate (must stay flat), and seconds per request as the
   retained data grows (must grow linearly).
3. Peak RSS of a streamed request on an ImageFolder of 2,000 vs 20,000 images decoded at 96 px (must stay flat),
   and of the same folder held in memory (grows).

On a GPU machine, ``python benchmarks/scale/run.py --device cuda --out benchmarks/scale/gpu`` writes the GPU
version next to this one. Writes results.json and report.md (here, or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import CACHE, setup_logging, write_results  # noqa: E402

from gslora.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from gslora.data import ImageSet, Request  # noqa: E402
from gslora.engine.loop import Profile, make_optimizer, optimise, resolve_device  # noqa: E402
from gslora.engine.provenance import stamp  # noqa: E402
from gslora.methods import TaskContext, build_method  # noqa: E402
from gslora.models import build_model, save_checkpoint  # noqa: E402

MODELS = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224")
STEP_CASES = [("gs_lora", "fp32"), ("gs_lora", "bf16"), ("random_label", "fp32")]  # random_label: full fine-tuning
METHOD = {"gs_lora": {"name": "gs_lora", "bnd": 10.0}, "random_label": {"name": "random_label"}}
SMALL_VIT = {"family": "timm", "depth": 4, "width": 128, "heads": 4, "patch_size": 7, "image_size": 28,
             "in_chans": 1, "num_classes": 10}


def peak_memory(device: torch.device) -> float:
    """MiB: the GPU's peak allocation, or this process's peak resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def step_worker(spec: dict) -> dict:
    """One model / method / precision: engine seconds per step, bare-loop seconds per step, peak memory."""
    device = resolve_device(spec["device"])
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="timm", name=spec["model"], image_size=224, in_chans=3,
                                    num_classes=100)).to(device)
    batch, steps = spec["batch"], spec["steps"]
    x = torch.randint(0, 255, (2 * batch, 3, 224, 224), dtype=torch.uint8)
    y = torch.arange(2 * batch) % 100
    forget = ImageSet(x[:batch], torch.zeros(batch, dtype=torch.long))
    retain = ImageSet(x[batch:], 1 + y[batch:] % 99)
    method = build_method(METHOD[spec["method"]])
    context = TaskContext(Request(0, (0,), tuple(range(1, 100)), ()), 1, steps, forget, retain, device=device)
    method.setup_task(model, context)
    train = TrainConfig(epochs=1, batch_size=batch, lr=1e-4, min_steps=0, precision=spec["precision"])
    batches = [((forget.images.to(device), forget.labels.to(device)), (retain.images.to(device),
                                                                        retain.labels.to(device)))]

    def engine(n: int) -> float:
        profile = Profile(device)
        start = time.perf_counter()
        optimise(method, train, steps_per_epoch=n, epoch_batches=lambda: iter(batches * n), desc="step",
                 device=device, profile=profile)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / n

    def bare(n: int) -> float:
        params = method.trainable_parameters()
        optimizer = make_optimizer(params, train)
        start = time.perf_counter()
        for _ in range(n):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["precision"] == "bf16"):
                loss = method.training_step(*batches[0], epoch=0)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / n

    engine(1), bare(1)  # warm-up (allocator, kernels)
    engine_seconds, bare_seconds = [], []
    for _ in range(spec["repeats"]):  # interleaved, so that a change in the machine's load hits both
        engine_seconds.append(engine(steps))
        bare_seconds.append(bare(steps))
    ratios = sorted(e / b for e, b in zip(engine_seconds, bare_seconds, strict=True))  # each pair ran back to back
    return {"engine_seconds_per_step": min(engine_seconds), "bare_seconds_per_step": min(bare_seconds),
            "engine_over_bare": ratios[len(ratios) // 2], "engine_over_bare_pairs": ratios,
            "peak_mib": peak_memory(device),
            "trainable_parameters": sum(p.numel() for p in method.trainable_parameters()),
            "parameters": sum(p.numel() for p in model.parameters())}


def random_base(path: Path, classes: list[str]) -> Path:
    """A checkpoint of the benchmark ViT with random weights (what a request costs does not depend on them)."""
    if not (path / "config.json").is_file():
        torch.manual_seed(0)
        save_checkpoint(build_model(ModelConfig(**SMALL_VIT)), path, classes=classes)
    return path


def request_worker(spec: dict) -> dict:
    """A run of ``spec["requests"]`` through the engine; per request seconds, steps and where the time went."""
    from gslora.config import from_dict
    from gslora.engine import ForgetConfig, run_forgetting

    run_dir = Path(spec["run_dir"])
    shutil.rmtree(run_dir, ignore_errors=True)
    config = from_dict(ForgetConfig, {
        "checkpoint": spec["checkpoint"], "data": spec["data"],
        "sequence": {"requests": spec["requests"], "ratio": spec["ratio"], "min_per_class": 1},
        "method": METHOD["gs_lora"], "verify": {"enabled": False}, "acceptance": {"accept_partial": True},
        "train": {"epochs": spec["epochs"], "min_steps": spec["min_steps"], "batch_size": 48, "lr": 0.01,
                  "device": spec["device"]}})
    manifest = run_forgetting(config, run_dir)
    rows = []
    for r in manifest["requests"]:
        loop = sum(r["profile"].get(k, 0.0) for k in ("data", "forward", "backward"))
        rows.append({"request": r["index"], "steps": r["steps"], "retain_images": r["train_images"]["retain"],
                     "seconds": r["seconds"], "loop_seconds_per_step": loop / r["steps"], "profile": r["profile"]})
    shutil.rmtree(run_dir, ignore_errors=True)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child (see the report)
    return {"requests": rows, "peak_mib": peak_memory(resolve_device(spec["device"])), "worker_peak_mib": children}


def write_folder(root: Path, n: int) -> Path:
    """An ImageFolder of ``n`` Fashion-MNIST training images (PNG) and 500 test images, made once."""
    done = root / "done"
    if done.is_file():
        return root
    from PIL import Image

    from gslora.data import load_dataset

    shutil.rmtree(root, ignore_errors=True)
    data = load_dataset(DataConfig())
    for split, images, count in (("train", data.train, n), ("test", data.test, 500)):
        for i in range(count):
            j = i % len(images)
            folder = root / split / data.classes[int(images.labels[j])].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images.images[j, 0].numpy()).save(folder / f"{i}.png")
    done.write_text("")
    return root


def worker(kind: str, spec: dict) -> dict:
    """Run one measurement in a fresh process (its own peak memory); returns its JSON answer."""
    result = subprocess.run([sys.executable, __file__, "--worker", kind, json.dumps(spec)], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{kind} {spec} failed: {result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per repeat (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="engine / bare pairs, back to back (default 3)")
    parser.add_argument("--quick", action="store_true", help="ViT-Ti only, smaller folders (a check of the script)")
    parser.add_argument("--out", help="write results.json and report.md here instead of this folder")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--report-only", action="store_true", help="only write report.md again from results.json")
    args = parser.parse_args()
    if args.report_only:
        out = Path(args.out).resolve() if args.out else HERE
        (out / "report.md").write_text(report(json.loads((out / "results.json").read_text())))
        return 0
    if args.worker:
        kind, spec = args.worker
        print(json.dumps({"step": step_worker, "request": request_worker}[kind](json.loads(spec))))
        return 0
    setup_logging()
    device = resolve_device(args.device)
    out = Path(args.out).resolve() if args.out else HERE
    out.mkdir(parents=True, exist_ok=True)
    batch = 32 if device.type == "cuda" else 8
    cache = CACHE / "scale"
    models = MODELS[:1] if args.quick else MODELS
    results: dict = {"steps": {}, "requests_grow": {}, "retain_grows": {}, "folders": {}}

    for name in models:
        for method, precision in STEP_CASES:
            spec = {"model": name, "method": method, "precision": precision, "batch": batch, "steps": args.steps,
                    "repeats": args.repeats, "device": str(device)}
            row = worker("step", spec)
            results["steps"][f"{name}/{method}/{precision}"] = {**row, **stamp(), "config": spec}
            print(f"{name} {method} {precision}: {row['engine_seconds_per_step']:.3f} s/step "
                  f"(bare {row['bare_seconds_per_step']:.3f}), peak {row['peak_mib']:.0f} MiB", file=sys.stderr)

    from gslora.data import load_dataset

    base = str(random_base(cache / "base", load_dataset(DataConfig()).classes))
    fashion = {"dataset": "fashion-mnist"}
    spec = {"checkpoint": base, "data": fashion, "requests": [["Bag"], ["Coat"], ["Trouser"], ["Sneaker"],
                                                              ["Dress"], ["Shirt"]],
            "ratio": 0.02, "epochs": 1, "min_steps": 40, "device": str(device), "run_dir": str(cache / "run")}
    results["requests_grow"] = {**worker("request", spec), **stamp(), "config": spec}
    for ratio in (0.01, 0.02, 0.04, 0.08):
        spec = {"checkpoint": base, "data": fashion, "requests": [["Bag"]], "ratio": ratio, "epochs": 1,
                "min_steps": 0, "device": str(device), "run_dir": str(cache / "run")}
        results["retain_grows"][str(ratio)] = {**worker("request", spec), **stamp(), "config": spec}

    sizes = (500, 5000) if args.quick else (2000, 20000)
    for n in sizes:
        folder = write_folder(cache / f"folder-{n}", n)
        folder_base = str(random_base(cache / "base-folder", sorted(p.name for p in (folder / "train").iterdir())))
        for stream in ("true", "false"):
            data = {"dataset": str(folder), "image_size": 96, "stream": stream}
            spec = {"checkpoint": folder_base, "data": data,
                    "requests": [["Bag"]], "ratio": 0.05, "epochs": 1, "min_steps": 10, "device": str(device),
                    "run_dir": str(cache / "run")}
            results["folders"][f"{n}/{stream}"] = {**worker("request", spec), "images": n, "stream": stream,
                                                   **stamp(), "config": spec}

    config = {"models": list(models), "step_cases": STEP_CASES, "batch": batch, "steps": args.steps,
              "repeats": args.repeats,
              "device": str(device), "quick": args.quick}
    write_results(out, results, config)
    saved = json.loads((out / "results.json").read_text())
    (out / "report.md").write_text(report(saved))
    print((out / "report.md").read_text())
    return 0


def report(results: dict) -> str:
    lines = ["# scale", "", f"Device: {results['written']['hardware']}; code {results['written']['commit']}.", "",
             "## Per step (224 px, random weights)", "",
             "Engine: gslora's loop; bare: the same training_step / backward / AdamW step in a plain loop on the same "
             f"batch, timed in {results['config'].get('repeats', 2)} back-to-back pairs of "
             f"{results['config']['steps']} steps; s / step: the best of each; engine / bare: the median of the "
             "pairs' ratios (each pair saw the same machine load), all pairs in brackets. Peak: the measuring "
             "process's peak memory (resident set on a CPU, includes the interpreter and libraries: about 0.5 GiB).",
             "", "| model | method | precision | parameters | trainable | s / step (engine) | s / step (bare) | "
             "engine / bare | peak MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for key, row in results["steps"].items():
        model, method, precision = key.split("/")
        shown = "full fine-tuning" if method == "random_label" else method
        pairs = ", ".join(f"{r:.2f}" for r in row.get("engine_over_bare_pairs", []))
        lines.append(f"| {model} | {shown} | {precision} | {row['parameters']:,} | {row['trainable_parameters']:,} | "
                     f"{row['engine_seconds_per_step']:.3f} | {row['bare_seconds_per_step']:.3f} | "
                     f"{row['engine_over_bare']:.2f}x ({pairs}) | {row['peak_mib']:.0f} |")
    grow = results["requests_grow"]["requests"]
    lines += ["", "## Requests one after another (benchmark ViT, Fashion-MNIST, 2% per class)", "",
              "| request | retained images | steps | seconds | loop seconds / step |", "|---|---|---|---|---|"]
    lines += [f"| {r['request']} | {r['retain_images']} | {r['steps']} | {r['seconds']:.2f} | "
              f"{r['loop_seconds_per_step']:.4f} |" for r in grow]
    lines += ["", "## Retained data grows (one request, 1 epoch)", "",
              "| ratio | retained images | steps | seconds | seconds / retained image |", "|---|---|---|---|---|"]
    for ratio, row in results["retain_grows"].items():
        r = row["requests"][0]
        lines.append(f"| {ratio} | {r['retain_images']} | {r['steps']} | {r['seconds']:.2f} | "
                     f"{r['seconds'] / r['retain_images'] * 1000:.2f} ms |")
    lines += ["", "## Peak memory of a request on an ImageFolder (PNG files, decoded at 96 px)", "",
              "Peak: the training process (its DataLoader workers are separate processes). Child: the largest peak "
              "of any process it started: the DataLoader workers when streamed, and in every row the `git` call "
              "that records the code version in the run, which, forked from the training process, counts the pages it "
              "had resident at the fork; so it is an upper bound on a worker, not a worker's own memory.", "",
              "| images | streamed | peak MiB | child peak MiB |", "|---|---|---|---|"]
    lines += [f"| {row['images']:,} | {row['stream']} | {row['peak_mib']:.0f} | "
              f"{row.get('worker_peak_mib') or 0:.0f} |" for row in results["folders"].values()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
