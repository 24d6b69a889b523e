"""Does a participant's dataset fit the run's policy? A pure comparison of dataset descriptions.

The run's features are those of the coordinator's evaluation datasets: the policy's input and output
features come from them. A participant whose camera is named differently would otherwise join, train on a
camera slot the policy never sees, and be averaged in silently; `zk0 centralized` refuses the same mix
(zk0/data.py check_same_layout). Only what the policy consumes is compared: observation.state and
action (dtype and shape), the set of cameras (observation.images.*), and fps. Camera resolutions may
differ, as they may for `zk0 centralized`: SmolVLA resizes every frame, with padding, to its own input size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STATE, ACTION = "observation.state", "action"
CAMERA_PREFIX = "observation.images."
FRAME_DTYPES = ("image", "video")  # a camera stored as frames or as video decodes to the same tensors


def consumed_features(features: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """The features a policy reads, as {name: {"dtype": str, "shape": [int, ...]}} (a description's form)."""
    return {
        name: {"dtype": str(spec["dtype"]), "shape": [int(n) for n in spec["shape"]]}
        for name, spec in sorted(features.items())
        if name in (STATE, ACTION) or name.startswith(CAMERA_PREFIX)
    }


def feature_differences(
    run: Mapping[str, Mapping[str, Any]], run_fps: float, theirs: Mapping[str, Mapping[str, Any]], fps: float
) -> list[str]:
    """Every way a participant's features (`theirs`, at `fps`) differ from the run's, in words; [] if none."""
    run, theirs = consumed_features(run), consumed_features(theirs)
    problems = []
    for key in (STATE, ACTION):
        want, got = run.get(key), theirs.get(key)
        if want is None:
            continue
        if got is None:
            problems.append(f"feature {key} is missing (the run's is {want['dtype']} {want['shape']})")
            continue
        if got["dtype"] != want["dtype"]:
            problems.append(f"{key} dtype {got['dtype']} differs from the run's {want['dtype']}")
        if got["shape"] != want["shape"]:
            problems.append(f"{key} shape {got['shape']} differs from the run's {want['shape']}")
    cameras = sorted(k for k in run if k.startswith(CAMERA_PREFIX))
    listed = ", ".join(cameras) or "none"
    for key in sorted(k for k in theirs if k.startswith(CAMERA_PREFIX)):
        if key not in run:
            problems.append(f"camera {key} is not one of the run's cameras ({listed})")
        elif theirs[key]["dtype"] not in FRAME_DTYPES:
            problems.append(
                f"camera {key} dtype {theirs[key]['dtype']} is not one of {', '.join(FRAME_DTYPES)}"
            )
    problems += [f"camera {key} is missing" for key in cameras if key not in theirs]
    if run_fps and fps != run_fps:
        problems.append(f"fps {fps:g} differs from the run's {run_fps:g}")
    return problems
