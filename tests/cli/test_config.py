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
        ({"sampler": {"batch_size": "8"}}, r"'sampler.batch_size' must be an integer >= 1, got '8'"),
        ({"sampler": {"batch_size": 0}}, r"'sampler.batch_size' must be an integer >= 1, got 0"),
        ({"trainer": {"epochs": -1}}, r"'trainer.epochs' must be an integer >= 1, got -1"),
        ({"trainer": {"lr": "fast"}}, r"'trainer.lr' must be a finite number > 0"),
        ({"trainer": {"lr": 0}}, r"'trainer.lr' must be a finite number > 0"),
        ({"model": {"dropout": 1.5}}, r"'model.dropout' must be a finite number >= 0.0 and <= 1.0"),
        ({"balancer": "uwx"}, r"'balancer': unknown balancer 'uwx'. Did you mean 'uw'\?"),
        ({"balancer": {"name": "pcgrd"}}, r"'balancer.name': unknown balancer 'pcgrd'. Did you mean 'pcgrad'\?"),
        (
            {"balancer": {"name": "dwa", "temprature": 2}},
            r"Unknown key 'balancer.temprature'.*Did you mean 'temperature'",
        ),
        ({"sampler": {"balance": {"b": "inverse"}}}, r"'sampler.balance.b' names the task 'b'"),
        ({"sampler": {"balance": "invers"}}, r"'sampler.balance' is 'invers'; Did you mean 'inverse'"),
        (
            {"sampler": {"batch_size": 2, "quotas": {"aa": 2}}},
            r"'sampler.quotas.aa' names the task 'aa'.*Did you mean 'a'",
        ),
        (
            {"sampler": {"batch_size": 4, "quotas": {"a": 2}}},
            r"'sampler.quotas' sum to 2, but 'sampler.batch_size' is 4",
        ),
        ({"sampler": {"schedule": {"b": 1}}}, r"'sampler.schedule.b' names the task 'b'"),
        ({"sampler": {"length": "forever"}}, r"'sampler.length' is 'forever'"),
        ({"trainer": {"monitor": "val/b/f1"}}, r"'trainer.monitor' names the task 'b'"),
        ({"trainer": {"monitor": "val/a/mae"}}, r"task 'a' has no val metric 'mae'"),
        ({"trainer": {"monitor": "valid/loss"}}, r"'trainer.monitor' is 'valid/loss'"),
        ({"trainer": {"scheduler": "cosin"}}, r"'trainer.scheduler' is 'cosin'; Did you mean 'cosine'"),
        ({"model": {"backbone": {"name": "mlpp"}}}, r"'model.backbone.name' is 'mlpp'; Did you mean 'mlp'"),
        ({"model": {"init_output_bias": {"balanced": ["b"]}}}, r"'model.init_output_bias.balanced' names the task 'b'"),
        ({"tasks": {"a": {"kind": "multiclass", "num_classes": 1}}}, r"'tasks.a'"),
        ({"sampler": {"drop_last": 1}}, r"'sampler.drop_last' must be true/false"),
        ({"trainer": {"epochs": True}}, r"'trainer.epochs' must be an integer >= 1, got True"),
        ({"trainer": {"optimizer": "lbfgs"}}, r"allowed values: sgd, adam, adamw"),
        ({"model": {"architecture": "resnet"}}, r"'model.architecture' is 'resnet'"),
        ({"model": {"architecture": "mtn"}}, r"Did you mean 'mtan'"),
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
        (
            {"train": {"a": {"source": "npz", "path": "x", "inputs": "x", "colour": 1}}},
            r"Unknown key 'data.train.a.colour'",
        ),
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
    cfg = load_config(
        path, overrides=dict([parse_override("trainer.epochs=5"), parse_override("sampler.batch_size=4")])
    )
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


def test_numbers_as_yaml_reads_them_and_every_registered_architecture():
    """PyYAML reads ``1e-3`` as a string (YAML 1.1 wants a dot): accepted as the number users mean."""
    import yaml

    from hydranet.models import ARCHITECTURES

    raw = yaml.safe_load("trainer: {lr: 1e-3, weight_decay: 5e-4}")
    assert raw["trainer"]["lr"] == "1e-3"
    cfg = validate_config({**MINIMAL, **raw})
    assert cfg.trainer["lr"] == 1e-3 and cfg.trainer["weight_decay"] == 5e-4
    for name in ARCHITECTURES:  # mtan, dselect_k, ltb, ... from the registry, not a list of our own
        assert validate_config({**MINIMAL, "model": {"architecture": name}}).model["architecture"] == name


def test_task_names_known_from_the_sources():
    folder = {"data": {"train": {"source": "folder", "path": "x", "separator": "_", "tasks": ["color", "item"]}}}
    with pytest.raises(ConfigError, match=r"'sampler.balance.colour'.*Did you mean 'color'"):
        validate_config({**folder, "sampler": {"balance": {"colour": "inverse"}}})
    pattern = r"(?P<age>\d+)_(?P<gender>\d)_(?P<race>\d)_"
    files = {"data": {"train": {"source": "filenames", "path": "x", "pattern": pattern}}}
    with pytest.raises(ConfigError, match=r"'trainer.monitor' names the task 'gendr'.*Did you mean 'gender'"):
        validate_config({**files, "trainer": {"monitor": "val/gendr/loss"}})
    builtin = {"data": {"train": {"source": "builtin", "name": "multi_mnist"}}}
    with pytest.raises(ConfigError, match=r"'sampler.quotas.lefft'"):
        validate_config({**builtin, "sampler": {"batch_size": 2, "quotas": {"lefft": 2}}})
    csv = {"data": {"train": {"source": "csv", "path": "rows.csv"}}}  # tasks only the file knows: checked later
    assert validate_config({**csv, "sampler": {"balance": {"anything": "inverse"}}}).sampler["balance"]


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (
            {"source": "csv", "path": "m.csv", "duplicates": "merge"},
            r"'data.train.duplicates' must be one of error, drop, keep",
        ),
        ({"source": "csv", "path": "m.csv", "encoding": "latin-9x"}, r"'data.train.encoding' is 'latin-9x'"),
        (
            {"source": "csv", "path": "m.csv", "allow_outside_root": "yes"},
            r"'data.train.allow_outside_root' must be true or false",
        ),
        (
            {"source": "filenames", "path": "f", "pattern": "(?P<age>\\d+", "recursive": True},
            r"not a valid regular expression",
        ),
        (
            {"source": "filenames", "path": "f", "pattern": "(?P<age>\\d+)", "recursive": "true"},
            r"'data.train.recursive' must be true or false",
        ),
        ({"source": "folder", "path": "f", "verify": "yes"}, r"'data.train.verify' must be true, false or decode"),
        (
            {"source": "folder", "path": "f", "on_error": "skp"},
            r"'data.train.on_error' must be one of error, skip.*Did you mean 'skip'",
        ),
        ({"source": "hf", "path": "d", "unknown": "drop"}, r"'data.train.unknown' must be one of error, missing"),
    ],
)
def test_source_values_are_checked(source, match):
    with pytest.raises(ConfigError, match=match):
        validate_config({"data": {"train": source}})


def test_data_split_keys():
    source = {"source": "folder", "path": "f", "separator": "_", "tasks": ["color", "item"]}
    cfg = validate_config({"seed": 3, "data": {"train": source, "split": {"val": "0.1", "test": 0.2}}})
    assert cfg.data["split"] == {"val": 0.1, "test": 0.2, "seed": 3, "stratify": "auto"}  # the config's seed
    for split, match in [
        ({}, r"needs val and/or test shares"),
        ({"val": 0.6, "test": 0.5}, r"val \+ test must be below 1"),
        ({"val": 1.5}, r"'data.split.val' must be a finite number >= 0.0 and <= 1.0"),
        ({"val": 0.1, "stratify": "colr"}, r"'data.split.stratify' names the task 'colr'.*Did you mean 'color'"),
        ({"vall": 0.1}, r"Unknown key 'data.split.vall'"),
    ]:
        with pytest.raises(ConfigError, match=match):
            validate_config({"data": {"train": source, "split": split}})
    with pytest.raises(ConfigError, match=r"'data.split.val' and 'data.val' both"):
        validate_config({"data": {"train": source, "val": source, "split": {"val": 0.1}}})
    with pytest.raises(ConfigError, match=r"builtin data has its own splits"):
        validate_config({"data": {"train": {"source": "builtin", "name": "multi_mnist"}, "split": {"val": 0.1}}})
