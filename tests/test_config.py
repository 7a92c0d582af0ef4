import dataclasses

import pytest

from pipeline.config import ConfigError, RootConfig, load_config, to_yaml
from tests.helpers import run_cli


def test_defaults_and_overrides():
    cfg = load_config(None, ["data.batch_size=32", "optim.milestones=[10,20]", "model.name=resnet50"])
    assert cfg.data.batch_size == 32 and cfg.optim.milestones == (10, 20) and cfg.model.name == "resnet50"
    assert isinstance(cfg, RootConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data.batch_size = 1  # type: ignore[misc]


def test_yaml_file_with_base(tmp_path):
    (tmp_path / "base.yaml").write_text("optim:\n  lr: 0.5\ndata:\n  batch_size: 8\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ndata:\n  batch_size: 16\n")
    cfg = load_config(tmp_path / "child.yaml", ["optim.lr=0.25"])
    assert (cfg.optim.lr, cfg.data.batch_size) == (0.25, 16)  # override > file > base


@pytest.mark.parametrize("override, expected", [
    ("data.batchsize=3", "unknown config key 'data.batchsize' in command-line overrides; did you mean 'data.batch_size'?"),
    ("trainer.precison=bf16", "did you mean 'trainer.precision'?"),
    ("data.batch_size=abc", "config key 'data.batch_size'"),
    ("trainer.precision=bf61", "did you mean 'bf16'?"),
])
def test_config_errors_name_the_key(override, expected):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, [override])
    assert expected in str(info.value)


def test_unknown_key_in_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr' in .*bad.yaml; did you mean 'optim.lr'"):
        load_config(tmp_path / "bad.yaml")


def test_cli_config_error_is_one_line_exit_2():
    proc = run_cli("train", "data.batchsize=3", quick=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["config error: unknown config key 'data.batchsize' in command-line overrides; did you mean 'data.batch_size'?"]
    assert "Traceback" not in proc.stderr


def test_cli_missing_config_file():
    proc = run_cli("train", "--config", "configs/nope.yaml", quick=True)
    assert proc.returncode == 2 and "config file not found: configs/nope.yaml" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["optim.lr=nan"], "config key 'optim.lr' must be a finite number, got nan"),
    (["optim.lr=0"], "config key 'optim.lr' must be > 0, got 0.0"),
    (["data.workers=-3"], "config key 'data.workers' must not be negative, got -3"),
    (["data.hflip=1.5"], "config key 'data.hflip' is a fraction: it must be within [0, 1], got 1.5"),
    (["model=3"], "config section 'model' in override 'model=3' must be a mapping of keys (e.g. model: {...}), got 3"),
    (["--config", "{yaml}"], "config section 'model' in {yaml} must be a mapping of keys (e.g. model: {...}), got 3"),
    (["trainer.run_dir=/proc/x"], "trainer.run_dir /proc/x cannot be created (No such file or directory); "
                                  "set trainer.run_dir to a writable folder"),
])
def test_bad_values_end_before_training_with_one_line(tmp_path, args, message):
    yaml_file = tmp_path / "section.yaml"
    yaml_file.write_text("model: 3\n")
    proc = run_cli("train", *[a.replace("{yaml}", str(yaml_file)) for a in args], quick=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"config error: {message.replace('{yaml}', str(yaml_file))}"]


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["model.name=resnet34"])
    (tmp_path / "c.yaml").write_text(to_yaml(cfg))
    assert load_config(tmp_path / "c.yaml") == cfg


def test_train_help_lists_every_key_from_the_schema():
    from pipeline.config.describe import describe

    keys = describe()
    assert [k.key for k in keys if not k.doc] == []  # every field in schema.py carries its comment
    text = run_cli("train", "--help", quick=True, check=True).stdout
    for item in keys:
        section = item.key.rpartition(".")[0]
        assert f"\n  {section or 'top level'}:" in text
        assert f"    {item.key} ({item.type}, default " in text, item.key  # dotted, as typed and grepped
    assert "    optim.lr (float, default 0.4): " in text and "linear scaling" in text.lower()
    keys_out = run_cli("config", "--keys", quick=True, check=True).stdout
    assert [line for line in keys_out.splitlines() if "data.auto_augment" in line][0].startswith("    data.auto_augment (str")


def test_pipeline_config_prints_what_would_run_and_its_diff(tmp_path):
    resolved = run_cli("config", "optim.lr=0.2", quick=True, check=True).stdout
    (tmp_path / "resolved.yaml").write_text(resolved)
    assert load_config(tmp_path / "resolved.yaml") == load_config(None, ["optim.lr=0.2"])
    config = "configs/imagenet/resnet152.yaml"
    diff = run_cli("config", "--config", config, "--diff", quick=True, check=True).stdout.strip().splitlines()
    assert "data.batch_size=32" in diff and "model.name=resnet152" in diff and not any("momentum" in d for d in diff)
    assert load_config(None, diff) == load_config(config)  # the diff, as overrides, is the whole config
