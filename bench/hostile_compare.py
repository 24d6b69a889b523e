"""Learning quality with one hostile participant of four, per aggregation strategy, on the demo task.

Runs `zk0 simulate`'s wiring (real coordinator, real gRPC on 127.0.0.1, real SmolVLA training) on the demo
config with four participants, for each strategy: all honest, then with p3 an attacker. The attacker trains
honestly, then uploads base - scale x (its trained model - base):
a sign-flipped, scaled model-poisoning update, valid in every field and (at the default scale) close enough
to the others to pass the intake's distance screens. Prints the final evaluation loss of each run, the
attacked run's ratio to the same strategy's honest run, and to the honest run of the first strategy listed
(FedAvg by default).

    .venv/bin/python -m bench.hostile_compare --out /tmp/hostile        # 8 demo runs, ~1-2 min each
    .venv/bin/python -m bench.hostile_compare --strategies fedavg,median --set federation.rounds=2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from zk0.records import RoundEntry

HOSTILE = "p3"


def poisoning_client(scale: float):
    """A ParticipantClient subclass whose uploads are base - scale x (trained - base)."""
    from participant.client import ParticipantClient
    from zk0.policy import trainable_state
    from zk0.tensors import decode_state, encode_state

    class PoisoningClient(ParticipantClient):
        def local_update(self, runtime, hp, deadline):
            base = {k: v.clone() for k, v in trainable_state(runtime.bundle.policy).items()}
            result, payload = super().local_update(runtime, hp, deadline)
            trained = decode_state(payload)
            poisoned = {
                k: (base[k].float() - scale * (t.float() - base[k].float())).to(t.dtype)
                for k, t in trained.items()
            }
            return result, encode_state(poisoned)

    return PoisoningClient


def final_eval(entries: list[RoundEntry]) -> dict[str, float]:
    last = [e for e in entries if e.eval is not None][-1]
    return {"loss": last.eval.loss, "action_mae": last.eval.composite.get("action_mae")}


def run(config_path: Path, overrides: list[str], out: Path, strategy: str, scale: float | None, device: str):
    from participant.client import ParticipantClient
    from zk0.config import load_config
    from zk0.simulate import simulate

    config = load_config(config_path, [*overrides, f"federation.strategy='{strategy}'"])
    attacker = poisoning_client(scale) if scale else None

    def make_client(options, **kwargs):
        hostile = attacker is not None and options.name == HOSTILE
        return (attacker if hostile else ParticipantClient)(options, **kwargs)

    started = time.monotonic()
    entries = simulate(config, out, device=device, progress=False, make_client=make_client)
    return {**final_eval(entries), "seconds": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/demo.toml"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/zk0-hostile"))
    parser.add_argument("--strategies", default="fedavg,median,trimmed_mean,norm_bounded")
    parser.add_argument("--scale", type=float, default=4.0, help="the attacker's sign-flipped scale")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from zk0.console import quiet_libraries, setup_logging

    setup_logging(False)
    quiet_libraries()
    four = [
        "demo.participants=4",
        'data.participants=["demo:p0", "demo:p1", "demo:p2", "demo:p3"]',
        "federation.min_participants=4",
        "federation.fraction=1.0",
        *args.overrides,
    ]
    rows: dict[str, dict] = {}
    for strategy in args.strategies.split(","):
        for scale in (None, args.scale):
            kind = "hostile" if scale else "honest"
            out = args.out / f"{kind}-{strategy}"
            rows[f"{strategy}, {'1 hostile' if scale else 'all honest'}"] = run(
                args.config, four, out, strategy, scale, args.device
            )
    honest = rows[f"{args.strategies.split(',')[0]}, all honest"]["loss"]
    load = os.getloadavg()
    print(f"\nhostile {HOSTILE} of 4, scale {args.scale:g}; load average {load[0]:.1f}, {load[1]:.1f}")
    print(
        "| strategy | eval loss, all honest | eval loss, 1 hostile | hostile / honest | hostile / honest "
        + args.strategies.split(",")[0]
        + " |"
    )
    print("| --- | --- | --- | --- | --- |")
    for strategy in args.strategies.split(","):
        clean, attacked = rows[f"{strategy}, all honest"]["loss"], rows[f"{strategy}, 1 hostile"]["loss"]
        ratios = f"{attacked / clean:.3f} | {attacked / honest:.3f}"
        print(f"| {strategy} | {clean:.4f} | {attacked:.4f} | {ratios} |")
    (args.out / "hostile.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
