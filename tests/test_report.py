"""The run's reports from hand-built metrics.jsonl records: charts (valid PNGs, the right series in the right
places), the model card (front matter, tables, final vs best, config, loading), and the hub push checks,
which can only be exercised offline here: they must refuse with one line."""

import re

import pytest
import yaml
from huggingface_hub import constants
from PIL import Image

from coordinator.adaptive import Decision
from zk0 import charts, hub, report
from zk0.errors import Zk0Error
from zk0.records import RoundEntry, latest_rounds

CONFIG = """seed = 0

[train]
lr = 0.001
local_steps = 20

[federation]
rounds = 4
strategy = "fedprox"
mu = 0.01
"""

PARTICIPANTS = {
    "p0": {
        "repo_id": "lerobot/svla_so100_pickplace",
        "episodes": 50,
        "frames": 19631,
        "fps": 30,
        "features": [{"name": "observation.state", "dtype": "float32", "shape": [6]}, {"name": "action"}],
    },
    "p1": {"repo_id": "demo:p1", "episodes": 8, "frames": 480, "fps": 30, "features": []},
    "p2": {"repo_id": "/data/private_set", "episodes": 12, "frames": 3456, "fps": 30.0, "features": []},
}
EVAL_DATASETS = {
    "demo:eval": {"repo_id": "demo:eval", "episodes": 4, "frames": 240},
    "lerobot/svla_so100_stacking": {
        "repo_id": "lerobot/svla_so100_stacking",
        "episodes": 56,
        "frames": 22956,
    },
}


def evaluation(a_loss, b_loss, composite, mae=None):
    def metrics(loss, samples):
        out = {"loss": loss, "samples": samples, "batches": 2}
        if mae is not None:
            out["action_mae"] = mae
        return out

    out = {
        "datasets": {"demo:eval": metrics(a_loss, 32), "lerobot/svla_so100_stacking": metrics(b_loss, 64)},
        "composite": {"loss": composite},
    }
    if mae is not None:
        out["composite"]["action_mae"] = mae
    return out


def train_round(
    r, base, version, *, accepted, dropped=(), attempt=1, mu=0.01, lr=1e-3, boosted=None, **extra
):
    entry = {
        "round": r,
        "attempt": attempt,
        "base_version": base,
        "hyperparameters": {"lr": lr, "mu": mu, "local_steps": 20, "lr_per_participant": boosted or {}},
        "participants": {
            "sampled": sorted([*accepted, *dropped]),
            "accepted": list(accepted),
            "refused": [],
            "dropped": list(dropped),
        },
        "updates": {
            n: {"policy_loss": 0.5 + i / 10, "proximal_loss": 0.01, "samples": 160, "sample_count": 480}
            for i, n in enumerate(accepted)
        },
        "participant_eval": {
            n: {"loss": 3.0 - r / 4 + i / 10, "action_mae": 0.5, "samples": 16, "batches": 1}
            for i, n in enumerate([*accepted, *dropped])
        },
        "bytes": {"down": 1000, "up": 900},
        "seconds": {"wait_participants": 0.1, "train": 3.0},
    }
    if version is not None:
        entry["version"] = version
    entry.update(extra)
    return entry


def run_entries(*, adaptive: bool = False) -> list[dict]:
    """Round 0; round 1 recorded twice (resumed: the second wins); round 2 failed once (p2 dropped, no
    version) and redone; round 3 not evaluated; round 4 final, worse than the best (round 2)."""

    def ad(**kw):
        """What the coordinator writes: Decision.to_record() of the decision taken after the round."""
        return {"adaptive": Decision(**kw).to_record().to_json()} if adaptive else {}

    return [
        {"round": 0, "version": "v0", "eval": evaluation(2.25, 1.875, 2.0, mae=0.9)},
        train_round(1, "v0", "v1-stale", accepted=["p0", "p1", "p2"], eval=evaluation(7.777, 7.777, 7.777)),
        train_round(
            1,
            "v0",
            "v1",
            accepted=["p0", "p1", "p2"],
            eval=evaluation(1.625, 1.4375, 1.5, mae=0.7),
            best={"round": 1, "version": "v1", "loss": 1.5},
            **ad(mu=0.02, lr=1e-3, lr_per_participant={}),
        ),
        train_round(2, "v1", None, accepted=["p0", "p1"], dropped=["p2"], mu=0.02 if adaptive else 0.01),
        train_round(
            2,
            "v1",
            "v2",
            attempt=2,
            accepted=["p0", "p1"],
            dropped=["p2"],
            mu=0.02 if adaptive else 0.01,
            eval=evaluation(1.1875, 1.0625, 1.125, mae=0.375),
            best={"round": 2, "version": "v2", "loss": 1.125},
            **ad(mu=0.04, lr=5e-4, lr_per_participant={"p2": 7.5e-4}),
        ),
        train_round(
            3,
            "v2",
            "v3",
            accepted=["p0", "p1", "p2"],
            mu=0.04 if adaptive else 0.01,
            lr=5e-4 if adaptive else 1e-3,
            boosted={"p2": 7.5e-4} if adaptive else None,
            best={"round": 2, "version": "v2", "loss": 1.125},
            **ad(mu=0.04, lr=5e-4, lr_per_participant={}, rollback=True, hold=True, rules=["spike"]),
        ),
        train_round(
            4,
            "v2" if adaptive else "v3",  # the spike guard rolled back to the best model (round 2)
            "v4",
            accepted=["p0", "p1", "p2"],
            mu=0.04 if adaptive else 0.01,
            lr=5e-4 if adaptive else 1e-3,
            eval=evaluation(1.3125, 1.1875, 1.25, mae=0.4375),
            best={"round": 2, "version": "v2", "loss": 1.125},
        ),
    ]


def typed(entries: list[dict]) -> list[RoundEntry]:
    """The entries as the reports read them: through the round record type (metrics.jsonl's layout)."""
    return [RoundEntry.from_json(e) for e in entries]


# ------------------------------------------------------------------------------------------------ records


def test_latest_rounds_keeps_the_last_aggregated_entry_of_each_round():
    kept = latest_rounds(typed(run_entries()))
    assert list(kept) == [0, 1, 2, 3, 4]
    assert kept[1].version == "v1"  # the resumed record replaced the stale one
    assert kept[2].version == "v2" and kept[2].attempt == 2  # the failed attempt (no version) is not kept


def test_participant_eval_is_placed_at_the_round_that_made_the_model():
    kept = latest_rounds(typed(run_entries()))
    series = charts.participant_series(kept, "loss")
    assert [x for x, _ in series["p0"]] == [0, 1, 2, 3]  # round r's report of its starting model, at r - 1
    assert series["p0"][0] == (0, 2.75)
    assert [x for x, _ in series["p2"]] == [0, 1, 2, 3]  # dropped in round 2, yet it reported its evaluation
    rolled = charts.participant_series(latest_rounds(typed(run_entries(adaptive=True))), "loss")
    assert [x for x, _ in rolled["p0"]] == [0, 1, 2, 2]  # round 4 started from round 2's model (rollback)
    unknown = [{k: v for k, v in e.items() if k != "base_version"} for e in run_entries(adaptive=True)]
    assert [x for x, _ in charts.participant_series(latest_rounds(typed(unknown)), "loss")["p0"]] == [
        0,
        1,
        2,
        3,
    ]


def test_eval_series_skip_unevaluated_rounds():
    composite, datasets = charts.eval_series(latest_rounds(typed(run_entries())), "loss")
    assert composite == [(0, 2.0), (1, 1.5), (2, 1.125), (4, 1.25)]
    assert datasets["demo:eval"] == [(0, 2.25), (1, 1.625), (2, 1.1875), (4, 1.3125)]


# ------------------------------------------------------------------------------------------------- charts


@pytest.fixture
def figures(monkeypatch):
    """The figures write_charts saves, by file name, to inspect what was drawn."""
    saved = {}
    original = charts._save

    def keep(fig, path):
        saved[path.name] = fig
        return original(fig, path)

    monkeypatch.setattr(charts, "_save", keep)
    return saved


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 200 and image.height > 200
        assert "Software" not in image.info
        image.verify()


@pytest.mark.parametrize("adaptive", [False, True])
def test_charts_are_valid_pngs_with_the_series(tmp_path, figures, adaptive):
    paths = charts.write_charts(typed(run_entries(adaptive=adaptive)), tmp_path / "charts")
    assert [p.name for p in paths] == ["eval_loss.png", "hyperparameters.png"]
    for path in paths:
        assert_png(path)

    loss_ax, mae_ax = figures["eval_loss.png"].axes
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    composite = lines["global model, composite"]
    assert list(composite.get_xdata()) == [0, 1, 2, 4] and list(composite.get_ydata()) == [
        2.0,
        1.5,
        1.125,
        1.25,
    ]
    assert {"global model on demo:eval", "global model on lerobot/svla_so100_stacking"} <= set(lines)
    assert {"p0 held-out (*)", "p1 held-out (*)", "p2 held-out (*)", "redone round"} <= set(lines)
    assert "r - 1" in loss_ax.get_xlabel()
    assert loss_ax.get_legend() is not None and loss_ax.get_title() and loss_ax.get_ylabel() == "loss"
    assert mae_ax.get_ylabel() == "action MAE"

    mu_ax, lr_ax = figures["hyperparameters.png"].axes
    (mu_line,) = mu_ax.get_lines()
    assert list(mu_line.get_xdata()) == [1, 2, 3, 4]
    assert list(mu_line.get_ydata()) == ([0.01, 0.02, 0.04, 0.04] if adaptive else [0.01] * 4)
    assert lr_ax.get_yscale() == "log"
    labels = {line.get_label() for line in lr_ax.get_lines()}
    assert ("boosted lr of p2" in labels) == adaptive
    assert ("rollback to the best model after" in labels) == adaptive


def test_charts_are_deterministic(tmp_path):
    a = charts.write_charts(typed(run_entries(adaptive=True)), tmp_path / "a")
    b = charts.write_charts(typed(run_entries(adaptive=True)), tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


@pytest.mark.parametrize(
    "entries",
    [
        [],
        [{"round": 0, "version": "v0", "eval": evaluation(2.0, 2.0, 2.0)}],
        [
            {"round": 0, "version": "v0", "eval": evaluation(2.0, 2.0, 2.0)},
            train_round(1, "v0", "v1", accepted=["p0"], eval=evaluation(1.0, 1.0, 1.0)),
        ],
        [{"round": 0, "version": "v0"}, train_round(1, "v0", "v1", accepted=["p0"], participant_eval={})],
    ],
    ids=["nothing", "round-0-only", "one-round", "no-eval-at-all"],
)
def test_charts_cope_with_short_runs(tmp_path, entries):
    paths = charts.write_charts(typed(entries), tmp_path)
    assert {p.name for p in paths} == {"eval_loss.png", "hyperparameters.png"}
    for path in paths:
        assert_png(path)


# --------------------------------------------------------------------------------------------- model card


def card(**overrides):
    args = {
        "config_toml": CONFIG,
        "entries": run_entries(),
        "participants": PARTICIPANTS,
        "eval_datasets": EVAL_DATASETS,
        "base_model": "lerobot/smolvla_base",
        "final_version": "v4",
        "best": {"round": 2, "version": "v2", "loss": 1.125},
    }
    args = {**args, **overrides}
    return report.model_card(**{**args, "entries": typed(args["entries"])})


def front_matter(text):
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, text[:200]
    return yaml.safe_load(match.group(1))


def test_model_card_front_matter_for_the_hub():
    meta = front_matter(card())
    assert meta["library_name"] == "lerobot"
    assert meta["pipeline_tag"] == "robotics"
    assert meta["tags"] == ["lerobot", "smolvla", "robotics", "federated-learning"]
    assert meta["base_model"] == "lerobot/smolvla_base"
    # hub datasets only: neither demo specs nor local paths
    assert meta["datasets"] == ["lerobot/svla_so100_pickplace", "lerobot/svla_so100_stacking"]
    assert "base_model" not in front_matter(card(base_model="tiny"))


def test_model_card_describes_the_run_and_its_data():
    text = card()
    assert "# SmolVLA fine-tuned federatedly with zk0" in text
    assert (
        "3 participant(s)" in text and "over 4 round(s)" in text and "FedProx" in text and "mu = 0.01" in text
    )
    assert "| Base model | lerobot/smolvla_base |" in text
    assert "| Rounds | 4 of 4 configured |" in text
    assert "| p0 | lerobot/svla_so100_pickplace | 50 | 19631 | 30 | observation.state, action | 4 |" in text
    assert (
        "| p2 | local dataset | 12 | 3456 | 30 | – | 3 |" in text
    )  # dropped from round 2; path not published
    assert "| demo:eval | demo:eval | 4 | 240 |" in text
    assert "| lerobot/svla_so100_stacking | lerobot/svla_so100_stacking | 56 | 22956 |" in text
    assert "| 2 | 2 | p0, p1 | p2 | 0.01 | 0.001 | 1.125 |" in text  # the redone round, its second attempt
    assert "| 3 | 1 | p0, p1, p2 | – | 0.01 | 0.001 | – |" in text  # not evaluated
    assert "7.777" not in text  # the superseded record of round 1


def test_model_card_publishes_hub_ids_only_and_counts_local_datasets():
    """A participant's local dataset appears as "local dataset" (never its path or directory name, whether
    the description carries the raw spec or zk0's local/<dirname> id), counted; hub ids stay."""
    participants = {
        **PARTICIPANTS,
        "p3": {
            "repo_id": "local/alice_kitchen_2024",
            "episodes": 5,
            "frames": 500,
            "fps": 30,
            "features": [],
        },
    }
    text = card(participants=participants)
    assert "/data/private_set" not in text and "private_set" not in text
    assert "alice_kitchen_2024" not in text
    assert "| p3 | local dataset | 5 | 500 | 30 | – |" in text
    assert "2 of 4 participant(s) trained on local datasets that are not on the hub" in text
    assert "| p0 | lerobot/svla_so100_pickplace |" in text
    assert front_matter(text)["datasets"] == ["lerobot/svla_so100_pickplace", "lerobot/svla_so100_stacking"]


def test_zk0_owned_repo_ids_are_not_hub_datasets():
    from zk0.demo import REPO_PREFIX

    assert hub.DEMO_OWNER == REPO_PREFIX
    assert hub.is_hub_dataset_id("lerobot/svla_so100_pickplace")
    for repo_id in ("local/mine", "zk0-demo/p0", "/data/x", "demo:p0"):
        assert not hub.is_hub_dataset_id(repo_id), repo_id


def test_model_card_final_and_best_metrics_come_from_their_rounds():
    text = card()
    assert "| Base model (round 0) | 0 | 2 | 0.9 |" in text
    assert "| Final | 4 | 1.25 | 0.4375 |" in text
    assert "| Best | 2 | 1.125 | 0.375 |" in text
    header = (
        "| Dataset | loss, round 0 | loss, final (round 4) | loss, best (round 2) | action MAE, round 0 | "
        "action MAE, final (round 4) | action MAE, best (round 2) |"
    )
    assert header in text
    assert "| demo:eval | 2.25 | 1.312 | 1.188 | 0.9 | 0.4375 | 0.375 |" in text
    assert "| lerobot/svla_so100_stacking | 1.875 | 1.188 | 1.062 | 0.9 | 0.4375 | 0.375 |" in text
    assert "| composite | 2 | 1.25 | 1.125 | 0.9 | 0.4375 | 0.375 |" in text


def test_model_card_best_defaults_to_the_runs_record_and_final_to_the_last_evaluation():
    entries = run_entries()
    given = card(best={"round": 1, "version": "v1", "loss": 1.5})  # the coordinator's word wins
    assert "| Best | 1 | 1.5 | 0.7 |" in given and "loss, best (round 1)" in given
    assert "| Best | 2 | 1.125 | 0.375 |" in card(best=None)  # from the entries' "best"
    no_records = [{k: v for k, v in e.items() if k != "best"} for e in entries]
    assert "| Best | 2 | 1.125 | 0.375 |" in card(best=None, entries=no_records)  # lowest composite
    stopped = card(entries=entries[:-1], final_version="v3")  # round 3 is final but not evaluated
    assert "| Final (last evaluated round) | 2 | 1.125 | 0.375 |" in stopped
    assert "round 3, version `v3`" in stopped


def test_model_card_strategy_and_adapted_hyperparameters():
    adapted = card(entries=run_entries(adaptive=True))
    assert "mu = 0.01 (adapted during the run: 0.01 to 0.04)" in adapted
    assert "server lr per round: 0.0005 to 0.001" in adapted
    fedavg = card(config_toml=CONFIG.replace('"fedprox"', '"fedavg"'))
    assert "FedAvg: participants train on their own loss only (mu = 0)" in fedavg
    assert "FedProx" not in fedavg


def test_model_card_config_block_and_loading_instructions():
    text = card()
    assert "```toml\n" + CONFIG + "```" in text
    assert "SmolVLAPolicy.from_pretrained(path)" in text
    assert "make_pre_post_processors(policy.config, pretrained_path=path)" in text
    assert "from lerobot.policies.smolvla import SmolVLAPolicy" in text
    assert "from lerobot.policies.factory import make_pre_post_processors" in text
    assert "`vlm/`" in text and "load_exported(" in text and "inside the folder" in text
    assert "This export has one" in card(base_model="tiny")
    assert "This export has one" not in text


# -------------------------------------------------------------------------------------------------- hub


def assert_one_line(info, *needles):
    message = str(info.value)
    assert "\n" not in message and message
    for needle in needles:
        assert needle in message, message
    return message


@pytest.fixture
def online_env(monkeypatch):
    """HF_HUB_OFFLINE unset (conftest sets it), as huggingface_hub also sees it."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.mark.parametrize("repo_id", ["model", "a/b/c", "owner/na me", "owner/bad--name", "/abs/path"])
def test_push_refuses_a_bad_repo_id(repo_id):
    with pytest.raises(Zk0Error) as info:
        hub.check_can_push(repo_id)
    assert_one_line(info, repo_id, "--push-to-hub")


def test_push_refuses_offline_mode_first(tmp_path):
    with pytest.raises(Zk0Error) as info:
        hub.check_can_push("someone/zk0-model")
    assert_one_line(info, "someone/zk0-model", "not reachable", "HF_HUB_OFFLINE", "--push-to-hub needs")
    with pytest.raises(Zk0Error) as info:
        hub.push_folder(tmp_path, "someone/zk0-model")
    assert_one_line(info, "not reachable", "HF_HUB_OFFLINE")


@pytest.mark.parametrize("token", [None, "hf_not_a_real_token"], ids=["no-token", "token"])
def test_push_refuses_an_unreachable_hub(online_env, monkeypatch, tmp_path, token):
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(Zk0Error) as info:
        hub.check_can_push("someone/zk0-model")
    assert_one_line(info, "someone/zk0-model", "not reachable", "--push-to-hub needs")
    if token:
        with pytest.raises(Zk0Error) as info:
            hub.push_folder(tmp_path, "someone/zk0-model")
        assert_one_line(info, "not reachable")


def test_push_check_against_the_real_endpoint_is_one_line(online_env, monkeypatch):
    """No network here: huggingface_hub fails fast with a connection error. Where the hub is reachable, the
    missing login is the one line instead."""
    with pytest.raises(Zk0Error) as info:
        hub.check_can_push("someone/zk0-model")
    message = assert_one_line(info, "someone/zk0-model")
    assert "not reachable" in message or "not logged in" in message


@pytest.mark.parametrize(
    ("user", "needle"),
    [
        ({"name": "me", "orgs": [{"name": "lab"}], "auth": {"accessToken": {"role": "read"}}}, "read-only"),
        (
            {"name": "me", "orgs": [{"name": "lab"}], "auth": {"accessToken": {"role": "write"}}},
            "logged in as 'me'",
        ),
        ({"name": "me", "orgs": [{"name": "someone"}], "auth": {"accessToken": {"role": "write"}}}, None),
        ({"name": "someone", "orgs": []}, None),
    ],
    ids=["read-only", "foreign-namespace", "own-org", "own-user"],
)
def test_push_check_reads_whoami(online_env, monkeypatch, user, needle):
    monkeypatch.setattr(hub, "get_token", lambda: "hf_token")
    monkeypatch.setattr(hub.HfApi, "whoami", lambda self, token=None: user)
    if needle is None:
        hub.check_can_push("someone/zk0-model")
        return
    with pytest.raises(Zk0Error) as info:
        hub.check_can_push("someone/zk0-model")
    assert_one_line(info, needle)


def test_push_folder_refuses_a_missing_folder(tmp_path):
    with pytest.raises(Zk0Error) as info:
        hub.push_folder(tmp_path / "final", "someone/zk0-model")
    assert_one_line(info, "not a directory")
