"""The pipeline config: strict keys, bad values named by field, safe YAML only."""
import pytest

from autodistill.config import ConfigError, PipelineConfig, check_against_models, check_against_task, \
    load_config, parse_config


def test_defaults_round_trip(tmp_path):
    cfg = PipelineConfig()
    path = tmp_path / "cfg.yaml"
    cfg.save(path)
    assert load_config(path) == cfg
    json_path = tmp_path / "cfg.json"
    cfg.save(json_path)
    assert load_config(json_path) == cfg


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"loss\.prediction\.temprature: unknown key"):
        parse_config({"loss": {"prediction": {"temprature": 2}}})


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"optim\.learning_rate"):
        parse_config({"optim": {"learning_rate": -1}})
    with pytest.raises(ConfigError, match=r"loss\.prediction\.type"):
        parse_config({"loss": {"prediction": {"type": "klx"}}})


def test_yaml_tags_are_not_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("optim: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_top_level_must_be_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_mi_alpha_range_and_scope():
    assert parse_config({"loss": {"intermediate": {"objective": "mi_alpha"}}}).loss.intermediate.alpha == 0.9
    with pytest.raises(ConfigError, match="alpha"):
        parse_config({"loss": {"intermediate": {"objective": "mi_alpha", "alpha": -0.1}}})
    with pytest.raises(ConfigError, match="alpha applies only"):
        parse_config({"loss": {"intermediate": {"objective": "mse", "alpha": 0.5}}})


def test_regression_rejects_classification_losses():
    with pytest.raises(ConfigError, match=r"loss\.prediction\.type='kl'"):
        check_against_task(PipelineConfig(), is_regression=True)
    check_against_task(parse_config({"loss": {"prediction": {"type": "mse"}}}), is_regression=True)


def test_depth_checks():
    cfg = parse_config({"student": {"num_layers": 8}})
    with pytest.raises(ConfigError, match=r"student\.num_layers=8"):
        check_against_models(cfg, teacher_layers=6, student_layers=8)
    cfg = parse_config({"loss": {"intermediate": {"objective": "mse", "mapping": "custom", "pairs": [[1, 9]]}}})
    with pytest.raises(ConfigError, match=r"loss\.intermediate\.pairs: teacher layer 9"):
        check_against_models(cfg, teacher_layers=6, student_layers=2)


def test_adoption_needs_two_teachers():
    with pytest.raises(ConfigError, match="dynamic.adoption needs at least two"):
        parse_config({"dynamic": {"adoption": "hard"}})
    with pytest.raises(ConfigError, match="dynamic.adoption is 'none'"):
        parse_config({"teachers": [{}, {}]})


def test_repeated_augmentation_needs_augmenters():
    with pytest.raises(ConfigError, match="repeated_aug"):
        parse_config({"augmentation": {"repeated_aug": 2}})
