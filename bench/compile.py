"""Does `torch.compile` pay for a training run on this machine? Eager vs compiled, compile time included.

    python bench/compile.py [--steps 6] [--train-images 203] [--bf16] [--set KEY=VALUE ...]

A proxy for a full training run that needs no dataset: the train stage's own epoch loop
(`train_one_epoch`: params.yaml's model, loss, precision, channels-last, Adam) on random
images and masks of the configured size and batch, eager and compiled with inductor (the
default backend), from the same initial weights. Only training is compiled; validation runs
the plain model either way, so it is left out. Timed per mode: the first step (for the
compiled model, the compilation) and --steps more steps, alternating between the modes.
Projected for params.yaml's `train.epochs` over --train-images images (drop_last batches,
as training does): total training time, eager and compiled. The last line is
`compile_vs_eager_full_run: X.XX` (eager time / compiled time, above 1 when compiling pays).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from ruamel.yaml import YAML

import pipeline  # noqa: F401  (environment set-up)
from pipeline.core.config import load_config, parse_config
from pipeline.core.device import Precision, choose_precision, resolve_device
from pipeline.model.losses import build_loss
from pipeline.model.network import build_model
from pipeline.train.loop import train_one_epoch


class Runner:
    """One model in one mode, with its own optimizer, taking one training step per call."""

    def __init__(self, cfg, compiled: bool, device, precision):
        torch.manual_seed(cfg.train.seed)  # the same initial weights in both modes
        self.model = build_model(cfg.model, cfg.data.class_spec()).to(device, memory_format=torch.channels_last)
        self.network = torch.compile(self.model) if compiled else self.model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr)
        self.loss_fn = build_loss(cfg.train.loss, cfg.data.class_spec())
        self.device, self.precision = device, precision

    def step(self, batch) -> float:
        started = time.perf_counter()
        train_one_epoch(self.network, [batch], self.loss_fn, self.optimizer, self.device, 1, self.precision)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps after the first (default: 6)")
    parser.add_argument("--train-images", type=int, default=203, help="train split size (default: the reference's)")
    parser.add_argument(
        "--bf16", action="store_true", help="bf16 autocast even where the CPU lacks native bf16 (train.amp picks fp32)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a params.yaml key")
    args = parser.parse_args()

    params = load_config().model_dump()
    for assignment in args.set:
        key, _, value = assignment.partition("=")
        section, _, name = key.partition(".")
        params[section][name] = YAML(typ="safe", pure=True).load(value)
    params["model"]["encoder_weights"] = None  # weights do not change the cost of a step
    cfg = parse_config(params)
    device = resolve_device(cfg.train.device)
    precision = Precision(device.type, torch.bfloat16) if args.bf16 else choose_precision(cfg.train.amp, device)
    size, batch = cfg.data.image_size, cfg.train.batch_size
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(batch, 3, size, size, generator=generator), (torch.rand(batch, 1, size, size) > 0.5).float())
        for _ in range(args.steps + 1)
    ]
    run_steps = cfg.train.epochs * (args.train_images // batch)
    print(
        f"compile: {platform.processor() or platform.machine()}, {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {cfg.model.arch} {cfg.model.encoder}, {precision.name}, {size}px, "
        f"batch {batch}; projecting {cfg.train.epochs} epochs x {args.train_images // batch} steps = {run_steps}"
    )

    runners = {"eager": Runner(cfg, False, device, precision), "compiled": Runner(cfg, True, device, precision)}
    seconds = {mode: [runner.step(batches[0])] for mode, runner in runners.items()}
    # Steady-state steps alternate between the modes, so that a change in the machine's load
    # during the run hits both alike.
    for pair in batches[1:]:
        for mode, runner in runners.items():
            seconds[mode].append(runner.step(pair))
    results = {}
    for mode, times in seconds.items():
        first, steady = times[0], sum(times[1:]) / args.steps
        results[mode] = (first, steady, first + (run_steps - 1) * steady)
        print(
            f"{mode:9s} first step {first:7.1f} s  then {steady:6.2f} s/step ({batch / steady:5.2f} img/s)  "
            f"projected {run_steps} steps: {results[mode][2] / 60:6.1f} min"
        )
    (eager_first, eager_step, eager_total), (compiled_first, compiled_step, compiled_total) = results.values()
    overhead = compiled_first - eager_first
    gain = eager_step - compiled_step
    break_even = f"{overhead / gain:.0f} steps" if gain > 0 else "never (compiled steps are not faster)"
    print(
        f"compile: costs {overhead:.1f} s once, then {compiled_step / eager_step:.2f}x the eager step time; "
        f"breaks even after {break_even}"
    )
    print(f"compile_vs_eager_full_run: {eager_total / compiled_total:.2f}")


if __name__ == "__main__":
    main()
