"""Hugging Face datasets reader (hydranet.data.readers.read_hf / read_hf_path): labels from Arrow columns.

Every dataset here is built offline (``Dataset.from_dict``, ``save_to_disk`` and local files in tmp_path);
the expected labels are the columns as written in each test.
"""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read at import by datasets: nothing may download
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

hf = pytest.importorskip("datasets")

import hydranet as hn  # noqa: E402
from hydranet.data import TaskBatchSampler, collate  # noqa: E402
from hydranet.data.readers import ReaderWarning, default_transform, read_hf, read_hf_path  # noqa: E402
from hydranet.data.readers.hf import HFSamples, load_hf  # noqa: E402

F = hf.Features
CLASSES = hf.ClassLabel(names=["cat", "dog", "fox"])


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    # In case datasets was imported before this module set the variables.
    monkeypatch.setattr(hf.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(hf.config, "HF_DATASETS_OFFLINE", True, raising=False)
    hf.disable_progress_bars()


def pixels(k: int, size=(5, 6)) -> np.ndarray:
    return np.random.default_rng(k).integers(0, 256, (*size, 3), dtype=np.uint8)


def images_dataset(n: int = 6) -> "hf.Dataset":
    return hf.Dataset.from_dict(
        {
            "image": [Image.fromarray(pixels(k)) for k in range(n)],
            "animal": [0, 1, None, 2, -1, 1][:n],  # None and -1 (Hugging Face's "no label") are missing
            "tags": [[0], [1, 2], None, [], [2, 0], [1]][:n],
            "age": [1.5, None, 3.25, 0.5, 7.0, 2.5][:n],
        },
        features=F({"image": hf.Image(), "animal": CLASSES, "tags": hf.List(CLASSES), "age": hf.Value("float32")}),
    )


class CountDecodes:
    """Counts calls of datasets' Image decoder (patched on the class, so every Image feature counts)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = hf.features.Image.decode_example

        def counting(feature, value, *args, **kwargs):
            self.calls += 1
            return original(feature, value, *args, **kwargs)

        monkeypatch.setattr(hf.features.Image, "decode_example", counting)


# -- labels ------------------------------------------------------------------------------------------------
def test_classlabel_names_become_class_names_and_none_is_masked(monkeypatch):
    decodes = CountDecodes(monkeypatch)
    ds = read_hf(images_dataset(), tasks=["animal", "tags", "age"], image_size=(4, 4))
    assert decodes.calls == 0  # labels, tasks and indices are known without decoding any image

    animal = ds.tasks["animal"]
    assert (animal.kind, animal.num_classes, animal.class_names) == ("multiclass", 3, ["cat", "dog", "fox"])
    assert ds.vocabularies["animal"] == ["cat", "dog", "fox"]
    assert ds.task_indices("animal").tolist() == [0, 1, 3, 5] and ds.labels("animal").tolist() == [0, 1, 2, 1]
    assert ds.task_indices("age").tolist() == [0, 2, 3, 4, 5]
    np.testing.assert_allclose(ds.labels("age"), [1.5, 3.25, 0.5, 7.0, 2.5])
    assert ds.class_counts("animal").tolist() == [1, 2, 1]
    assert decodes.calls == 0

    x, y = ds[2]  # animal and tags missing in row 2
    assert decodes.calls == 1
    assert set(y) == {"age"} and x.shape == (3, 4, 4)
    x, y = ds[0]
    assert y["animal"].item() == 0 and y["tags"].tolist() == [1.0, 0.0, 0.0]
    expected = default_transform(size=(4, 4))(Image.fromarray(pixels(0)))
    torch.testing.assert_close(x, expected)


def test_image_decoder_is_never_called_for_labels_of_a_larger_dataset(monkeypatch):
    n = 2_000
    data = hf.Dataset.from_dict(
        {"image": [Image.fromarray(pixels(0, (2, 2)))] * n, "label": np.arange(n) % 3},
        features=F({"image": hf.Image(), "label": CLASSES}),
    )
    decodes = CountDecodes(monkeypatch)
    ds = read_hf(data)  # input: the one Image column; tasks: every other column
    sampler = TaskBatchSampler(ds, batch_size=4, schedule="round_robin", balance="inverse", seed=0)  # reads all labels
    next(iter(sampler))
    assert decodes.calls == 0
    assert ds.class_counts("label").tolist() == [667, 667, 666]


def test_multilabel_from_a_list_of_classlabel_and_of_strings():
    ds = read_hf(images_dataset(), tasks=["tags"])
    task = ds.tasks["tags"]
    assert (task.kind, task.num_classes, task.class_names) == ("multilabel", 3, ["cat", "dog", "fox"])
    assert ds.task_indices("tags").tolist() == [0, 1, 3, 4, 5]  # None missing; [] is "no class present"
    np.testing.assert_array_equal(
        ds.labels("tags"), [[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 0, 1], [0, 1, 0]]
    )

    words = hf.Dataset.from_dict(
        {"x": [[0.0], [1.0], [2.0]], "colors": [["red", "blue"], None, ["green"]]},
        features=F({"x": hf.List(hf.Value("float32"), length=1), "colors": hf.List(hf.Value("string"))}),
    )
    ds = read_hf(words, input="x")
    assert ds.tasks["colors"].class_names == ["blue", "green", "red"]  # sorted names
    np.testing.assert_array_equal(ds.labels("colors"), [[1, 0, 1], [0, 1, 0]])
    with pytest.raises(ValueError, match=r"1 label\(s\) have class name\(s\) outside its vocabulary \['blue', 'green'\]:\n  red\n"):
        read_hf(words, input="x", vocabularies={"colors": ["blue", "green"]})
    with pytest.warns(ReaderWarning, match="dropped"):
        ds = read_hf(words, input="x", vocabularies={"colors": ["blue", "green"]}, unknown="missing")
    np.testing.assert_array_equal(ds.labels("colors"), [[1, 0], [0, 1]])


def test_regression_columns_scalar_and_vector_and_declared_kinds():
    data = hf.Dataset.from_dict(
        {
            "f": [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]],
            "price": [10.5, None, 3.0, float("nan")],  # NaN is missing like None
            "box": [[0.1, 0.2, 0.3], None, [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]],
            "count": [3, 0, -1, 5],  # integers: the kind must be declared
            "flag": [True, False, None, True],
            "grade": [2, 0, -1, 1],
        },
        features=F({
            "f": hf.List(hf.Value("float32"), length=2), "price": hf.Value("float64"),
            "box": hf.List(hf.Value("float32")), "count": hf.Value("int64"), "flag": hf.Value("bool"),
            "grade": hf.Value("int32"),
        }),
    )
    with pytest.raises(ValueError, match=r"Task 'count' \(column 'count'\): its values are whole numbers.*declare"):
        read_hf(data, input="f")
    ds = read_hf(data, input="f", tasks={"price": None, "box": None, "count": "regression", "flag": None,
                                         "grade": hn.Task("grade", "multiclass", num_classes=4)})
    assert ds.tasks["price"].kind == "regression" and ds.task_indices("price").tolist() == [0, 2]
    assert ds.tasks["box"] == hn.Task("box", "regression", dim=3)
    np.testing.assert_allclose(ds.labels("box"), [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]], rtol=1e-6)
    np.testing.assert_array_equal(ds.labels("count"), [3, 0, -1, 5])  # -1 is a value in regression
    assert ds.tasks["flag"].kind == "binary" and ds.labels("flag").tolist() == [1, 0, 1]
    assert ds.tasks["grade"].num_classes == 4 and ds.task_indices("grade").tolist() == [0, 1, 3]
    x, y = ds[1]
    assert x.tolist() == [2.0, 3.0] and set(y) == {"count", "flag", "grade"}
    assert isinstance(ds.samples, torch.utils.data.TensorDataset)  # numeric inputs: batches by indexing

    # Whole floats could be classes or values; declared as classes they are read as indices.
    whole = hf.Dataset.from_dict({"x": [1.0, 2.0], "y": [1.0, 0.0]})
    with pytest.raises(ValueError, match="whole numbers"):
        read_hf(whole, input="x", tasks=["y"])
    assert read_hf(whole, input="x", tasks={"y": "binary"}).labels("y").tolist() == [1, 0]


def test_string_labels_follow_the_reader_rules_and_vocabularies():
    data = hf.Dataset.from_dict({"x": [1.0, 2.0, 3.0, 4.0], "size": ["small", "large", "", "small"]})
    ds = read_hf(data, input="x")
    assert ds.vocabularies == {"size": ["large", "small"]} and ds.task_indices("size").tolist() == [0, 1, 3]
    other = read_hf(data, input="x", vocabularies={"size": ["small", "medium", "large"]})
    assert other.labels("size").tolist() == [0, 2, 0] and other.tasks["size"].num_classes == 3
    with pytest.raises(ValueError, match=r"2 sample\(s\) have class name\(s\) outside its vocabulary \['large', 'medium'\]:\n  small\n"):
        read_hf(data, input="x", vocabularies={"size": ["large", "medium"]})


def test_classlabel_read_with_another_splits_vocabulary_is_remapped_by_name():
    test_split = hf.Dataset.from_dict(
        {"x": [0.0, 1.0, 2.0], "animal": [0, 1, 1]}, features=F({"x": hf.Value("float32"),
                                                               "animal": hf.ClassLabel(names=["dog", "cat"])})
    )
    ds = read_hf(test_split, input="x", vocabularies={"animal": ["cat", "dog", "fox"]})
    assert ds.labels("animal").tolist() == [1, 0, 0] and ds.tasks["animal"].class_names == ["cat", "dog", "fox"]


def test_feature_columns_stacked_and_array_columns():
    data = hf.Dataset.from_dict(
        {"a": [1, 2, 3], "b": [0.5, None, 1.5], "m": [np.full((2, 2), k, np.float32) for k in range(3)],
         "y": [0, 1, 0]},
        features=F({"a": hf.Value("int32"), "b": hf.Value("float32"), "m": hf.Array2D((2, 2), "float32"),
                    "y": hf.ClassLabel(names=["no", "yes"])}),
    )
    with pytest.warns(ReaderWarning, match=r"(?s)1 of 3 samples skipped.*row 1: input 'b' is None"):
        ds = read_hf(data, input=["a", "b"], tasks=["y"])
    assert ds.samples.tensors[0].tolist() == [[1.0, 0.5], [3.0, 1.5]] and ds.labels("y").tolist() == [0, 0]
    assert ds.skipped[0].path == "row 1"
    grid = read_hf(data, input="m", tasks=["y"])
    assert grid[2][0].shape == (2, 2) and grid[2][0].eq(2).all()


def test_shuffled_and_selected_datasets_keep_rows_and_labels_aligned():
    data = images_dataset().shuffle(seed=3).select([4, 0, 2, 5])
    ds = read_hf(data, tasks=["animal", "age"], image_size=(5, 6))
    for i in range(len(data)):
        row = data[i]
        x, y = ds[i]
        if row["animal"] is not None and row["animal"] != -1:
            assert y["animal"].item() == row["animal"]
        else:
            assert "animal" not in y
        if row["age"] is not None:
            assert y["age"].item() == pytest.approx(row["age"])
        np.testing.assert_allclose(x.numpy(), np.asarray(row["image"]).transpose(2, 0, 1) / 255, rtol=1e-6)


def test_concatenated_and_filtered_datasets_and_undecoded_image_columns():
    data = images_dataset()
    joined = hf.concatenate_datasets([data, data.select([3, 0])])  # a table of several Arrow chunks
    kept = joined.filter(lambda row: row["age"] is not None)  # filter leaves a row mapping
    ds = read_hf(kept.cast_column("image", hf.Image(decode=False)), tasks=["animal", "age"], image_size=(5, 6))
    ages = [1.5, 3.25, 0.5, 7.0, 2.5, 0.5, 1.5]  # rows 0, 2, 3, 4, 5 of data, then its rows 3 and 0
    np.testing.assert_allclose(ds.labels("age"), ages)
    assert ds.task_indices("animal").tolist() == [0, 2, 4, 5, 6] and ds.labels("animal").tolist() == [0, 2, 1, 2, 0]
    np.testing.assert_allclose(ds[5][0].numpy(), pixels(3).transpose(2, 0, 1) / 255, rtol=1e-6)  # decoded anyway


def test_list_of_integers_is_multilabel_once_declared():
    data = hf.Dataset.from_dict({"x": [0.0, 1.0, 2.0], "labels": [[0, 3], [], [5]]})
    with pytest.raises(ValueError, match=r"List of integers, which could be label indices .*multilabel"):
        read_hf(data, input="x")
    with pytest.warns(ReaderWarning, match=r"row 2: labels: a value in row 2 is not a label in \[0, 4\)"):
        ds = read_hf(data, input="x", tasks={"labels": {"kind": "multilabel", "num_classes": 4}})
    np.testing.assert_array_equal(ds.labels("labels"), [[1, 0, 0, 1], [0, 0, 0, 0]])
    assert ds.tasks["labels"] == hn.Task("labels", "multilabel", num_classes=4)


def test_sampler_and_dataloader_batches_match_the_columns():
    data = images_dataset()
    ds = read_hf(data, tasks=["animal", "age"], image_size=(4, 4))
    batches = list(TaskBatchSampler(ds, batch_size=2, schedule="round_robin", seed=0, length="all"))
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, collate_fn=collate)
    seen = 0
    for indices, batch in zip(batches, loader):
        assert batch.inputs.shape == (len(indices), 3, 4, 4)
        for task, targets in batch.targets.items():
            for row, index in enumerate(indices):
                value = data[index][task]
                labelled = value is not None and not (task == "animal" and value == -1)
                assert bool(batch.masks[task][row]) == labelled
                if labelled:
                    assert targets[row].item() == pytest.approx(value)
        seen += len(indices)
    assert seen == len(ds.task_indices("animal")) + len(ds.task_indices("age"))


@pytest.mark.slow
def test_dataloader_workers_read_the_saved_dataset(tmp_path):
    images_dataset().save_to_disk(str(tmp_path / "saved"))
    ds = read_hf_path(tmp_path / "saved", tasks=["animal"], image_size=(4, 4))
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate, num_workers=2)
    batches = list(loader)
    assert sum(len(b.inputs) for b in batches) == len(ds)
    assert torch.cat([b.targets["animal"][b.masks["animal"]] for b in batches]).tolist() == [0, 1, 2, 1]


def test_raw_input_column_goes_through_the_transform():
    data = hf.Dataset.from_dict({"text": ["a b", "c", None], "topic": ["x", "y", "x"]})
    with pytest.raises(ValueError, match="pass transform="):
        read_hf(data, input="text")
    with pytest.warns(ReaderWarning, match="no value in input column 'text'"):
        ds = read_hf(data, input="text", transform=lambda s: torch.tensor(len(s.split())))
    assert isinstance(ds.samples, HFSamples) and len(ds) == 2
    assert [ds[i][0].item() for i in range(2)] == [2, 1]


# -- from disk and from files ------------------------------------------------------------------------------
def test_save_to_disk_round_trip(tmp_path):
    data = images_dataset()
    hf.DatasetDict({"train": data, "test": data.select([0, 1])}).save_to_disk(str(tmp_path / "dict"))
    data.save_to_disk(str(tmp_path / "one"))
    direct = read_hf(data, tasks=["animal", "tags"], image_size=(4, 4))
    again = read_hf_path(tmp_path / "one", tasks=["animal", "tags"], image_size=(4, 4))
    assert again.tasks == direct.tasks
    for task in ("animal", "tags"):
        np.testing.assert_array_equal(again.labels(task), direct.labels(task))
    torch.testing.assert_close(again[3][0], direct[3][0])

    test = read_hf_path(tmp_path / "dict", split="test", tasks=["animal"], image_size=(4, 4))
    assert len(test) == 2 and test.labels("animal").tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"holds the splits \['train', 'test'\]: pass split="):
        load_hf(tmp_path / "dict")
    with pytest.raises(ValueError, match="has no split 'tset'. Did you mean 'test'"):
        load_hf(tmp_path / "dict", split="tset")


def test_local_csv_json_and_parquet_files(tmp_path):
    csv = tmp_path / "rows.csv"
    csv.write_text("f1,f2,plan,score\n1,2.5,basic,0.5\n3,4.0,,1.5\n5,6.5,gold,\n", encoding="utf-8")
    ds = read_hf_path(csv, input=["f1", "f2"], tasks=["plan", "score"], cache_dir=tmp_path / "cache")
    assert ds.samples.tensors[0].tolist() == [[1.0, 2.5], [3.0, 4.0], [5.0, 6.5]]
    assert ds.vocabularies == {"plan": ["basic", "gold"]} and ds.task_indices("plan").tolist() == [0, 2]
    assert ds.task_indices("score").tolist() == [0, 1]

    hf.Dataset.from_dict({"f1": [1.0, 2.0], "y": [1, 0]}).to_parquet(str(tmp_path / "rows.parquet"))
    ds = read_hf_path(tmp_path / "rows.parquet", input="f1", tasks={"y": "binary"}, cache_dir=tmp_path / "cache")
    assert ds.labels("y").tolist() == [1, 0]
    same = read_hf_path("parquet", data_files={"train": str(tmp_path / "rows.parquet")}, split="train",
                        input="f1", tasks={"y": "binary"}, cache_dir=tmp_path / "cache")
    assert same.labels("y").tolist() == [1, 0]

    mixed = tmp_path / "mixed.json"
    mixed.write_text('[{"x": 1.0, "y": 1}, {"x": 2.0, "y": "b"}]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"Column 'y' holds JSON values of mixed types"):
        read_hf_path(mixed, input="x", tasks=["y"], cache_dir=tmp_path / "cache")


def test_local_paths_only(tmp_path):
    with pytest.raises(FileNotFoundError, match="Only local data is read"):
        load_hf("someone/some-dataset")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hf("csv", data_files=str(tmp_path / "absent.csv"))
    with pytest.raises(ValueError, match="Did you mean 'parquet'"):
        load_hf("parqet", data_files=str(tmp_path / "absent.csv"))


# -- errors ------------------------------------------------------------------------------------------------
def test_errors_name_the_column_and_the_fix():
    data = images_dataset()
    with pytest.raises(ValueError, match=r"not a column of the dataset. Did you mean 'animal'\?"):
        read_hf(data, tasks=["animl"])
    with pytest.raises(ValueError, match=r"input= names 'img'.*Did you mean 'image'\?"):
        read_hf(data, input="img", tasks=["animal"])
    with pytest.raises(ValueError, match=r"Column 'image' is the input"):
        read_hf(data, tasks=["image"])
    with pytest.raises(ValueError, match=r"Column 'image' is Image\(.*cannot be a label.*input="):
        read_hf(data, input="age", tasks=["image"])
    with pytest.raises(ValueError, match=r"input=\['age', 'image'\] mixes types: 'image' is Image"):
        read_hf(data, input=["age", "image"], tasks=["animal"])
    with pytest.raises(ValueError, match=r"ClassLabel column.*not 'regression'"):
        read_hf(data, tasks={"animal": "regression"})
    with pytest.raises(ValueError, match=r"rename_column\('label-x', 'label_x'\)"):
        read_hf(data.rename_column("animal", "label-x"), tasks=["label-x"])
    with pytest.raises(TypeError, match=r"DatasetDict with splits \['train'\]: pass dataset\['train'\]"):
        read_hf(hf.DatasetDict({"train": data}))
    with pytest.raises(ValueError, match="transform= and image_size= apply to an Image"):
        read_hf(data, input="age", tasks=["animal"], image_size=4)
    ragged = hf.Dataset.from_dict({"x": [[1.0], [1.0, 2.0]], "y": ["a", "b"]})
    with pytest.raises(ValueError, match=r"Input column 'x' holds lists of different lengths \(1, 2\)"):
        read_hf(ragged, input="x")
    nested = hf.Dataset.from_dict({"x": [1.0, 2.0], "meta": [{"a": 1}, {"a": 2}]})
    with pytest.raises(ValueError, match=r"Column 'meta' is a struct.*dataset.flatten\(\)"):
        read_hf(nested, input="x", tasks=["meta"])


def test_unusable_label_values_skip_their_rows_with_a_warning():
    data = hf.Dataset.from_dict({"x": [0.0, 1.0, 2.0], "grade": [0, 7, 2]})
    with pytest.warns(ReaderWarning, match=r"(?s)1 of 3 samples skipped.*row 1: grade=7 is not a class index"):
        ds = read_hf(data, input="x", tasks={"grade": {"kind": "multiclass", "num_classes": 3}})
    assert ds.labels("grade").tolist() == [0, 2] and ds.samples.tensors[0].tolist() == [[0.0], [2.0]]


def test_missing_datasets_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def without_datasets(name, *args, **kwargs):
        if name == "datasets" or name.startswith("datasets."):
            raise ImportError("No module named 'datasets'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_datasets)
    with pytest.raises(ImportError, match=r"pip install 'hydranet\[hf\]'"):
        read_hf(object())
