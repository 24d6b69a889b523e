"""Coordinator memory of each aggregation strategy at P = 4, 8, 16: the peak RSS one aggregate adds, against
the model's size and P x its largest tensor.

Every strategy reads the spooled updates one tensor at a time (coordinator/strategies/base.py), so its peak
should be O(model + P x largest tensor), not O(P x model). For each (strategy, P) a fresh process spools
nothing itself: the P updates and the base model are written once as safetensors files, then the process
runs one warm-up aggregate of one update (torch's first-use allocations), resets its peak RSS
(/proc/self/clear_refs), runs the screened aggregate of all P exactly as the coordinator does (distances,
screens, the strategy), and reads VmHWM - the RSS before.

    .venv/bin/python -m bench.strategy_memory                       # 112 MiB model, P = 4, 8, 16
    .venv/bin/python -m bench.strategy_memory --tensors 8 --participants 4 --strategies fedavg,median
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
from pathlib import Path

import torch

LARGE = 4 * 1024 * 1024  # elements of the one large tensor (16 MiB fp32)
SMALL = 1024 * 1024  # elements of every other tensor (4 MiB fp32)


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def model(tensors: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {f"layer{i:02d}.weight": torch.randn(SMALL, generator=g) * 0.02 for i in range(tensors)}
    state["embed.weight"] = torch.randn(LARGE, generator=g) * 0.02
    return state


def write_round(directory: Path, tensors: int, participants: int) -> None:
    from zk0.tensors import write_state_atomic

    base = model(tensors, 0)
    write_state_atomic(directory / "base.safetensors", base)
    for p in range(participants):
        g = torch.Generator().manual_seed(p + 1)
        update = {k: v + 1e-3 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        write_state_atomic(directory / f"p{p:02d}.safetensors", update)


def measure(directory: str, strategy: str, participants: int, queue) -> None:
    torch.set_num_threads(1)
    from coordinator import strategies
    from coordinator.screening import complete_distances, screened_aggregate
    from coordinator.strategies import RoundUpdates
    from zk0.config import load_config
    from zk0.spool import SpoolReader

    root = Path(directory)
    config = load_config(None, [f"federation.strategy='{strategy}'", "strategy.clip_norm=0.5"])
    with SpoolReader(root / "base.safetensors") as reader:
        manifest = reader.manifest()
    updates = {f"p{p:02d}": (root / f"p{p:02d}.safetensors", 8.0) for p in range(participants)}
    rule = strategies.make(config)

    def aggregate(names: list[str]) -> None:
        chosen = {n: updates[n] for n in names}
        distances: dict[str, float] = {}
        complete_distances(chosen, distances, root / "base.safetensors")
        round_updates = RoundUpdates(1, manifest, root / "base.safetensors", chosen, distances)
        bounds = dict(max_norm=0.0, factor=0.0)
        result, _ = screened_aggregate(rule, round_updates, bounds=bounds, min_updates=1)
        assert result is not None

    aggregate(sorted(updates)[:1])  # a warm-up round: torch's first-use allocations are not the strategy's
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = rss_kib("VmRSS")
    aggregate(sorted(updates))
    queue.put((rss_kib("VmHWM") - before) / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=24, help="4 MiB tensors besides the 16 MiB one")
    parser.add_argument("--participants", default="4,8,16")
    parser.add_argument("--strategies", default="fedavg,median,trimmed_mean,norm_bounded,fedadam")
    args = parser.parse_args()
    counts = [int(p) for p in args.participants.split(",")]
    model_mib = (args.tensors * SMALL + LARGE) * 4 / 2**20
    largest_mib = LARGE * 4 / 2**20
    context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="zk0-strategy-memory-") as directory:
        write_round(Path(directory), args.tensors, max(counts))
        load = os.getloadavg()
        print(
            f"strategy memory: model {model_mib:.0f} MiB fp32 in {args.tensors + 1} tensors, largest "
            f"{largest_mib:.0f} MiB; 1 torch thread; load average {load[0]:.1f}"
        )
        print("| strategy | P | peak added MiB | / model | model + P x largest MiB |")
        print("| --- | --- | --- | --- | --- |")
        for strategy in args.strategies.split(","):
            for count in counts:
                queue = context.Queue()
                process = context.Process(target=measure, args=(directory, strategy, count, queue))
                process.start()
                added = queue.get(timeout=1800)
                process.join()
                bound = model_mib + count * largest_mib
                print(
                    f"| {strategy} | {count} | {added:.0f} | {added / model_mib:.2f} | {bound:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
