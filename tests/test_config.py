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
        ("federation.max_update_norm=-1", r"federation\.max_update_norm: must be >= 0"),
        (
            "federation.update_norm_median_factor=0.5",
            r"federation\.update_norm_median_factor: 0\.5 must be > 1",
        ),
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


def test_adaptive_rules_are_off_by_default_and_the_shipped_configs_list_every_key():
    import dataclasses
    import tomllib

    from zk0.config import AdaptiveConfig

    defaults = AdaptiveConfig()
    assert not (defaults.mu_dynamic or defaults.lr_adjust or defaults.lr_boost or defaults.spike_guard)
    assert not defaults.spike_rollback
    keys = [f.name for f in dataclasses.fields(AdaptiveConfig)]
    for name in ("demo.toml", "so100.toml"):
        section = tomllib.loads((CONFIGS / name).read_text())["adaptive"]
        assert list(section) == keys, name
        assert load_config(CONFIGS / name).adaptive == defaults, name


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("adaptive.mu_dynamic=1", r"adaptive\.mu_dynamic: expected true or false"),
        ("adaptive.mu_spread_threshold=0", r"adaptive\.mu_spread_threshold: must be > 0"),
        ("adaptive.mu_factor=1", r"adaptive\.mu_factor: 1\.0 must be > 1"),
        ("adaptive.mu_min=0", r"adaptive\.mu_min: must be > 0"),
        ("adaptive.mu_max=0.0001", r"adaptive\.mu_max: 0\.0001 is below adaptive\.mu_min"),
        ("adaptive.mu_calm_rounds=0", r"adaptive\.mu_calm_rounds: must be > 0"),
        ("adaptive.mu_decay=1.5", r"adaptive\.mu_decay: 1\.5 must be in \(0, 1\]"),
        ("adaptive.mu_decay=0", r"adaptive\.mu_decay: 0\.0 must be in \(0, 1\]"),
        ("adaptive.lr_window=1", r"adaptive\.lr_window: 1 must be >= 2"),
        ("adaptive.lr_stall_tolerance=-0.1", r"adaptive\.lr_stall_tolerance: must be >= 0"),
        ("adaptive.lr_stall_factor=1", r"adaptive\.lr_stall_factor: 1\.0 must be in \(0, 1\)"),
        ("adaptive.lr_diverge_tolerance=-1", r"adaptive\.lr_diverge_tolerance: must be >= 0"),
        ("adaptive.lr_diverge_factor=0", r"adaptive\.lr_diverge_factor: 0\.0 must be in \(0, 1\)"),
        ("adaptive.lr_min=0", r"adaptive\.lr_min: must be > 0"),
        ("adaptive.lr_max=1e-7", r"adaptive\.lr_max: 1e-07 is below adaptive\.lr_min"),
        ("adaptive.boost_k=0.5", r"adaptive\.boost_k: 0\.5 must be >= 1"),
        ("adaptive.boost_factor=1", r"adaptive\.boost_factor: 1\.0 must be > 1"),
        ("adaptive.spike_threshold=0", r"adaptive\.spike_threshold: must be > 0"),
        ("adaptive.spike_window=0", r"adaptive\.spike_window: must be > 0"),
        ("adaptive.spike_rollback=yes", r"adaptive\.spike_rollback: expected true or false"),
        ("adaptive.mu_dynamics=true", r"adaptive\.mu_dynamics: unknown key"),
    ],
)
def test_bad_adaptive_values_are_refused_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "demo.toml", [override])


def test_mu_dynamic_needs_fedprox():
    with pytest.raises(ConfigError, match=r"adaptive\.mu_dynamic: needs .*fedprox"):
        load_config(CONFIGS / "demo.toml", ["adaptive.mu_dynamic=true", "federation.strategy=fedavg"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.lr=1", "train.min_lr=1e-5"], r"train\.lr: 1\.0 exceeds adaptive\.lr_max 0\.01"),
        (["adaptive.lr_max=1e-4"], r"train\.lr: 0\.001 exceeds adaptive\.lr_max 0\.0001"),
        (
            ["adaptive.lr_min=0.01", "adaptive.lr_max=0.1"],
            r"train\.lr: 0\.001 is below adaptive\.lr_min 0\.01",
        ),
        (["adaptive.mu_min=0.05"], r"federation\.mu: 0\.01 is below adaptive\.mu_min 0\.05"),
        (["federation.mu=0"], r"federation\.mu: 0\.0 is below adaptive\.mu_min .*use federation\.strategy"),
        (["federation.mu=2"], r"federation\.mu: 2\.0 exceeds adaptive\.mu_max 1\.0"),
    ],
)
def test_starting_values_must_lie_within_the_documented_clamps_whatever_rules_are_on(overrides, message):
    """The config documents train.lr within [lr_min, lr_max] and federation.mu within [mu_min, mu_max]:
    enforced with every rule off (train.lr = 1 once ran to a loss of 77,439 and exited 0)."""
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "demo.toml", overrides)


def test_raised_clamps_admit_a_higher_lr():
    assert load_config(CONFIGS / "demo.toml", ["train.lr=0.05", "adaptive.lr_max=0.1"]).train.lr == 0.05


def test_adaptive_settings_round_trip_through_the_snapshot(tmp_path):
    config = load_config(
        CONFIGS / "demo.toml",
        [
            "adaptive.mu_dynamic=true",
            "adaptive.lr_adjust=true",
            "adaptive.spike_rollback=true",
            "adaptive.lr_max=1",
        ],
    )
    assert config.adaptive.lr_max == 1.0 and config.adaptive.mu_dynamic
    path = tmp_path / "snap.toml"
    path.write_text(config_to_toml(config))
    assert load_config(path) == config
