import pytest

from hydranet.cli.config import ConfigError, load_config, parse_override, validate_config

MINIMAL = {
    "tasks": {"a": {"kind": "binary"}},
    "data": {"train": {"a": {"source": "inline", "samples": [{"input": 1.0, "label": 1, "count": 2}]}}},
}


def test_defaults_are_filled_in():
    cfg = validate_config(MINIMAL)
    assert cfg.seed == 0
    assert cfg.sampler["batch_size"] == 32 and cfg.sampler["length"] == "max_size_cycle"
    assert cfg.model["architecture"] == "hydra"
    assert cfg.balancer == {"name": "ew"}
    assert cfg.trainer["optimizer"] == "adamw"
    assert cfg.tasks["a"]["weight"] == 1.0
    assert "per_task" in cfg.data["train"]


def test_shared_source_form():
    cfg = validate_config({"data": {"train": {"source": "builtin", "name": "multi_mnist", "split": "train"}}})
    assert cfg.data["train"]["shared"]["name"] == "multi_mnist"


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ({"sampler": {"shedule": "round_robin"}}, r"Unknown key 'sampler.shedule'. Did you mean 'schedule'"),
        ({"sampler": {"batch_size": "8"}}, r"'sampler.batch_size' must be integer, got str"),
        ({"sampler": {"drop_last": 1}}, r"'sampler.drop_last' must be true/false"),
        ({"trainer": {"epochs": True}}, r"'trainer.epochs' must be integer, got bool"),
        ({"trainer": {"optimizer": "lbfgs"}}, r"allowed values: sgd, adam, adamw"),
        ({"model": {"architecture": "resnet"}}, r"'model.architecture' is 'resnet'"),
        ({"tasks": {"a": {"kind": "ordinal"}}}, r"'tasks.a.kind' is 'ordinal'"),
        ({"tasks": {"a": {}}}, r"Missing required key 'tasks.a.kind'"),
        ({"balancer": {"c": 0.5}}, r"balancer.name' is required"),
        ({"colour": 1}, r"Unknown key 'colour'"),
    ],
)
def test_errors_name_the_key_and_the_fix(patch, match):
    raw = {**MINIMAL, **patch}
    with pytest.raises(ConfigError, match=match):
        validate_config(raw)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({}, r"Missing required key 'data.train'"),
        ({"train": {"a": {"source": "ftp"}}}, r"'data.train.a.source' is 'ftp'; allowed values: inline"),
        ({"train": {"a": {"source": "csv"}}}, r"Missing required key 'data.train.a.path'"),
        ({"train": {"a": {"source": "npz", "path": "x", "inputs": "x", "colour": 1}}}, r"Unknown key 'data.train.a.colour'"),
        ({"train": {"b": {"source": "inline", "samples": []}}}, r"'data.train.b' names a task that is not declared"),
        ({"training": {}}, r"Unknown key 'data.training'. Did you mean 'train'"),
        ({"train": [1, 2]}, r"must be one source"),
    ],
)
def test_data_section_errors(data, match):
    with pytest.raises(ConfigError, match=match):
        validate_config({**MINIMAL, "data": data})


def test_load_with_overrides_and_relative_paths(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "tasks: {a: {kind: binary}}\n"
        "data: {train: {a: {source: npz, path: data.npz, inputs: x}}}\n"
        "trainer: {epochs: 2}\n"
    )
    cfg = load_config(path, overrides=dict([parse_override("trainer.epochs=5"), parse_override("sampler.batch_size=4")]))
    assert cfg.trainer["epochs"] == 5 and cfg.sampler["batch_size"] == 4
    assert cfg.resolve("data.npz") == (tmp_path / "data.npz").resolve()


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="key.subkey=value"):
        parse_override("epochs")
