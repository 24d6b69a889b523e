from pathlib import Path

import pytest

from zk0.config import ConfigError, config_to_toml, load_config

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.mark.parametrize("name", ["demo.toml", "so100.toml"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / name)
    assert config.data.participants


def test_so100_is_the_real_setup():
    config = load_config(CONFIGS / "so100.toml")
    assert config.model.source == "lerobot/smolvla_base"
    assert config.data.participants == [
        "shaunkirby/record-test",
        "ethanCSL/direction_test",
        "gimarchetti/so101-winnie-us5",
        "olingoudey/so101_stationary_mug445",
    ]
    assert config.data.eval == [
        "Hupy440/Two_Cubes_and_Two_Buckets_v2",
        "dll-hackathon-102025/oct_19_440pm",
        "shuohsuan/grasp1",
    ]
    assert (config.train.batch_size, config.train.lr, config.federation.mu, config.train.local_steps) == (
        64,
        1e-4,
        0.01,
        20,
    )


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nbatch_sise = 4\n")
    with pytest.raises(ConfigError, match=r"train\.batch_sise: unknown key"):
        load_config(path)


def test_unknown_section_is_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[trian]\nbatch_size = 4\n")
    with pytest.raises(ConfigError, match=r"^trian: unknown key"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=four", r"train\.batch_size: expected an integer"),
        ("train.batch_size=2.5", r"train\.batch_size: expected an integer"),
        ("model.train_expert_only=1", r"model\.train_expert_only: expected true or false"),
        ("data.participants=3", r"data\.participants: expected a list"),
        ("train.lr=0", r"train\.lr: must be > 0"),
        ("train.schedule=linear", r"train\.schedule: 'linear' is not one of"),
        ("model.n_action_steps=99", r"model\.n_action_steps: 99 exceeds model\.chunk_size"),
        ("federation.mu=-1", r"federation\.mu: must be >= 0"),
        ("train=3", r"--set train: 'train' is a value|train: expected a table"),
        ("nokey", r"expected section\.key=value"),
    ],
)
def test_bad_values_are_refused_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "demo.toml", [override])


def test_set_overrides_values_of_every_type():
    config = load_config(
        CONFIGS / "demo.toml",
        [
            "train.local_steps=7",
            "train.lr=3e-4",
            "model.source=lerobot/smolvla_base",
            "model.train_state_proj=false",
            'data.participants=["demo:p1"]',
            "federation.mu=1",
        ],
    )
    assert config.train.local_steps == 7
    assert config.train.lr == 3e-4
    assert config.model.source == "lerobot/smolvla_base"
    assert config.model.train_state_proj is False
    assert config.data.participants == ["demo:p1"]
    assert config.federation.mu == 1.0 and isinstance(config.federation.mu, float)


def test_snapshot_round_trips(tmp_path):
    config = load_config(CONFIGS / "so100.toml", ["train.local_steps=3"])
    path = tmp_path / "snap.toml"
    path.write_text(config_to_toml(config))
    assert load_config(path) == config


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)
