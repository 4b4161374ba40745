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


# --------------------------------------------------------------------------- component names: the registries'
REGISTRY_FIELDS = [  # (registry, the config field that names one of its components)
    ("PREDICTION_LOSSES", ("loss", "prediction", "type")),
    ("INTERMEDIATE_OBJECTIVES", ("loss", "intermediate", "objective")),
    ("LAYER_MAPPINGS", ("loss", "intermediate", "mapping")),
    ("CRITICS", ("loss", "intermediate", "critic")),
    ("WEIGHTINGS", ("weighting", "strategy")),
    ("KD_SELECTIONS", ("dynamic", "selection")),
    ("TEACHER_ADOPTIONS", ("dynamic", "adoption")),
    ("METRICS", ("optim", "metric")),
]


def _field_choices(path: tuple[str, ...]) -> tuple:
    import typing
    model = PipelineConfig
    for name in path[:-1]:
        model = model.model_fields[name].annotation
    return typing.get_args(model.model_fields[path[-1]].annotation)


@pytest.mark.parametrize("registry_name,path", REGISTRY_FIELDS)
def test_config_choices_are_the_registrys_names(registry_name, path):
    """A config field naming a component accepts exactly its registry's names (and its 'off' value)."""
    from autodistill import registry
    reg = getattr(registry, registry_name)
    assert _field_choices(path) == reg.choices()
    section = {}
    node = section
    for name in path[:-1]:
        node = node.setdefault(name, {})
    node[path[-1]] = "no_such_component"
    with pytest.raises(ConfigError) as err:
        parse_config(section)
    assert all(repr(name) in str(err.value) for name in reg.names())   # the message lists the registered names


def test_augmenter_names_are_the_registrys():
    import typing

    from autodistill.config import AugmenterConfig
    from autodistill.registry import AUGMENTERS
    assert typing.get_args(AugmenterConfig.model_fields["name"].annotation) == AUGMENTERS.choices()


def test_every_registered_name_has_an_implementation():
    """Importing the engine registers a component for every name the registries declare."""
    import autodistill.augmentation  # noqa: F401
    import autodistill.dynamic  # noqa: F401
    import autodistill.losses  # noqa: F401
    import autodistill.mappings  # noqa: F401
    import autodistill.metrics  # noqa: F401
    import autodistill.weighting  # noqa: F401
    from autodistill.registry import ALL
    assert {r.kind: r.unimplemented() for r in ALL} == {r.kind: [] for r in ALL}


def test_registering_an_undeclared_name_fails_and_unknown_names_are_listed():
    from autodistill.registry import KD_SELECTIONS, UnknownComponent
    with pytest.raises(UnknownComponent, match="not declared"):
        KD_SELECTIONS.register("bogus")
    with pytest.raises(UnknownComponent, match=r"known: \['entropy', 'least_confidence', 'margin', 'none', 'random'\]"):
        KD_SELECTIONS.get("bogus")


def test_a_stored_config_without_a_later_setting_reads_and_hashes_as_it_ran():
    """data.dev_split and optim.evaluate_per came after configs were stored: a stored config without them ran
    at "row" and "epoch" (LEGACY_VALUES), reads so, and keeps its record key; the new default dev split
    ("text") is another config."""
    from autodistill.config import LEGACY_VALUES, with_legacy_values
    from autodistill.records import RunRecord, canonical_config_hash, record_key

    stored = PipelineConfig().to_dict()
    for section, name in LEGACY_VALUES:
        del stored[section][name]                                      # as every config was stored before
    as_ran = PipelineConfig.model_validate({**stored, "data": {**stored["data"], "dev_split": "row"}})
    assert PipelineConfig.model_validate(with_legacy_values(stored)) == as_ran
    assert with_legacy_values({"optim": {}}) == {"optim": {"evaluate_per": "epoch"}}   # only sections it has
    assert canonical_config_hash(stored) == canonical_config_hash(as_ran) != canonical_config_hash(PipelineConfig())
    record = RunRecord.from_dict({"config": stored, "key": record_key("d", stored, 42)})
    assert record.pipeline_config == as_ran and record.key == record_key("d", as_ran, 42)
