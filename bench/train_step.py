"""Our Lightning training step vs lerobot's own `update_policy` on the same tiny SmolVLA and batch.

Each measurement runs in its own process (so each has its own peak RSS), alternating ours/lerobot's, and
the script prints the per-pair time ratio and its median (target: <= 1.03).

    .venv/bin/python bench/train_step.py [--pairs 5] [--steps 40] [--warmup 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(kind: str, steps: int, warmup: int, demo: Path) -> dict:
    import lightning as L
    import torch
    from accelerate import Accelerator
    from lerobot.scripts.lerobot_train import update_policy
    from lerobot.utils.logging_utils import AverageMeter, MetricsTracker
    from torch.utils.data import DataLoader

    from zk0.config import load_config
    from zk0.data import open_source
    from zk0.training.datamodule import LeRobotDataModule
    from zk0.training.lightning_module import RoundPlan, SmolVLAModule
    from zk0.training.local_training import LocalTrainer
    from zk0.training.runtime import build_runtime

    torch.set_num_threads(1)
    config = load_config(ROOT / "configs/demo.toml", [f'demo.root="{demo}"', "train.device=cpu"])
    source = open_source("demo:p0", config)
    built = build_runtime(config, [source], source.meta.stats, device="cpu", heldout=1)  # seeds torch
    bundle = built.bundle
    dm = LeRobotDataModule(built.datasets[0], batch_size=config.train.batch_size, num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    total = steps + warmup

    if kind == "ours":
        module = SmolVLAModule(bundle, config.train, source="bench")
        trainer = LocalTrainer(module, dm, device="cpu", precision="32-true", progress=False)
        module.start_round(RoundPlan(lr=config.train.lr, mu=0.0, steps=total))
        marks: dict[str, float] = {}

        class Clock(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if batch_idx == warmup:
                    marks["start"] = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                marks["end"] = time.perf_counter()

        lightning_trainer = trainer.make_trainer(total)
        lightning_trainer.callbacks.append(Clock())
        loader = DataLoader([batch] * total, batch_size=None, collate_fn=lambda b: dict(b))
        lightning_trainer.fit(module, train_dataloaders=loader)
        seconds = marks["end"] - marks["start"]
    else:
        policy = bundle.policy
        params = [p for p in policy.parameters() if p.requires_grad]
        optimizer = policy.config.get_optimizer_preset().build(params)
        meters = {k: AverageMeter(k) for k in ("loss", "grad_norm", "lr", "update_s")}
        tracker = MetricsTracker(config.train.batch_size, 1000, 1, meters)
        accelerator = Accelerator(cpu=True)
        clean = {k: v for k, v in batch.items() if k != "zk0.bad_frames"}
        for i in range(total):
            if i == warmup:
                start = time.perf_counter()
            update_policy(tracker, policy, bundle.preprocessor(dict(clean)), optimizer, 10.0, accelerator)
        seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "step_s": seconds / steps, "peak_rss_mb": peak_mb}


def run_child(kind: str, args: argparse.Namespace, demo: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    cmd += ["--demo", str(demo)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--demo", type=Path, help="demo directory (default: a temporary one)")
    parser.add_argument("--child", choices=["ours", "lerobot"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.warmup, args.demo)))
        return
    demo = args.demo or Path(tempfile.mkdtemp(prefix="zk0-bench-demo-"))
    rows = []
    for pair in range(args.pairs):
        order = ("ours", "lerobot") if pair % 2 == 0 else ("lerobot", "ours")
        got = {kind: run_child(kind, args, demo) for kind in order}
        ratio = got["ours"]["step_s"] / got["lerobot"]["step_s"]
        rows.append((got["ours"], got["lerobot"], ratio))
        print(
            f"pair {pair + 1}: ours {got['ours']['step_s'] * 1000:7.1f} ms/step  "
            f"lerobot {got['lerobot']['step_s'] * 1000:7.1f} ms/step  ratio {ratio:.3f}",
            flush=True,
        )
    median = statistics.median(r[2] for r in rows)
    print(f"\nmedian time ratio ours/lerobot: {median:.3f} (target <= 1.03)")
    print(f"peak RSS ours:    {max(r[0]['peak_rss_mb'] for r in rows):.0f} MB")
    print(f"peak RSS lerobot: {max(r[1]['peak_rss_mb'] for r in rows):.0f} MB")


if __name__ == "__main__":
    main()
