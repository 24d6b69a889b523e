"""The demo's task language: its cube colours (with the gripper width each one asks for) and sentences.

The demo datasets draw their task strings from it and the tiny VLM's tokenizer is trained on exactly
these strings, so both build on this module and neither imports the other.
"""

# Colour name -> (RGB, gripper target): the gripper closes to a width that depends on the cube's colour.
COLOURS: dict[str, tuple[tuple[int, int, int], float]] = {
    "red": ((220, 40, 40), 10.0),
    "green": ((40, 200, 60), 25.0),
    "blue": ((50, 80, 230), 40.0),
    "yellow": ((230, 210, 40), 55.0),
    "magenta": ((210, 50, 200), 70.0),
    "cyan": ((40, 210, 220), 85.0),
}
TASK_TEMPLATES = (
    "move the arm to the {colour} cube",
    "reach for the {colour} cube",
    "touch the {colour} cube with the gripper",
)


def demo_tasks() -> list[str]:
    """Every task string the demo can produce (the tiny tokenizer is trained on these)."""
    return [t.format(colour=c) for c in COLOURS for t in TASK_TEMPLATES]
