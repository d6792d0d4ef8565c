"""Folder and file-name readers, image decoding, error policies, workers (hydranet.data.readers)."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

import hydranet as hn
from hydranet.data import collate
from hydranet.data.readers import (
    UTKFACE_PATTERN,
    UTKFACE_TASKS,
    ImageReadError,
    ReaderWarning,
    default_transform,
    load_vocabularies,
    read_filenames,
    read_folders,
    read_manifest,
)
from hydranet.data.readers.base import PackedStrings
from hydranet.data.readers.columns import declare_tasks, encode_column, text_cells


def save_image(path: Path, size=(6, 5), seed=0, fmt=None) -> np.ndarray:
    """A random RGB image of ``size = (H, W)`` written at ``path``; returns its pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return pixels


CLOTHES = {"black_jeans": 2, "blue_dress": 1, "blue_jeans": 2, "red_shirt": 3}


def clothes(root: Path, folders=CLOTHES, ext=".png") -> Path:
    """The article's layout: one folder per color_item, images inside."""
    for k, (folder, count) in enumerate(folders.items()):
        for i in range(count):
            save_image(root / folder / f"{i:03d}{ext}", seed=10 * k + i)
    return root


def expected_labels(ds, root: Path) -> dict[str, list[str]]:
    """Color and item of each sample, read independently from its path."""
    parts = [Path(p).relative_to(root).parts[0].split("_") for p in ds.paths]
    return {"color": [c for c, _ in parts], "item": [i for _, i in parts]}


# -- labels in folder names ------------------------------------------------------------------------------
def test_folder_names_give_two_tasks_with_sorted_vocabularies(tmp_path):
    root = clothes(tmp_path / "clothes")
    ds = read_folders(root, separator="_", tasks=["color", "item"])
    assert isinstance(ds, hn.data.MultiTaskDataset) and ds.is_shared and len(ds) == 8
    assert ds.vocabularies == {"color": ["black", "blue", "red"], "item": ["dress", "jeans", "shirt"]}
    truth = expected_labels(ds, root)
    for task in ("color", "item"):
        names = np.array(ds.vocabularies[task])[ds.labels(task)]
        assert names.tolist() == truth[task]
        np.testing.assert_array_equal(ds.task_indices(task), np.arange(8))
    assert ds.tasks["color"] == hn.Task("color", "multiclass", num_classes=3, class_names=["black", "blue", "red"])
    assert ds.tasks["item"].num_classes == 3 and ds.skipped == []
    x, y = ds[3]
    assert x.shape == (3, 6, 5) and x.dtype == torch.float32
    assert y == {"color": 1, "item": 1}  # blue_jeans/000.png
    assert y["color"].dtype == torch.int64


def test_regex_and_separator_agree(tmp_path):
    root = clothes(tmp_path / "clothes")
    by_sep = read_folders(root, separator="_", tasks=["color", "item"])
    by_regex = read_folders(root, r"(?P<color>[a-z]+)_(?P<item>[a-z]+)")
    assert by_regex.task_names == ["color", "item"] and by_regex.paths == by_sep.paths
    for task in ("color", "item"):
        np.testing.assert_array_equal(by_regex.labels(task), by_sep.labels(task))


def test_single_folder_task_sorts_names_like_imagefolder(tmp_path):
    root = clothes(tmp_path / "digits", {"2": 1, "10": 2, "1": 1})
    ds = read_folders(root)
    assert ds.task_names == ["label"] and ds.vocabularies == {"label": ["1", "10", "2"]}
    assert ds.labels("label").tolist() == [0, 1, 1, 2]


def test_non_ascii_folder_names(tmp_path):
    root = clothes(tmp_path / "衣服", {"黑色_牛仔裤": 1, "红色_衬衫": 2})
    ds = read_folders(root, separator="_", tasks=["color", "item"])
    assert ds.vocabularies == {"color": sorted(["黑色", "红色"]), "item": sorted(["牛仔裤", "衬衫"])}
    assert all(Path(p).exists() for p in ds.paths)
    assert ds[2][0].shape == (3, 6, 5)


def test_malformed_folder_is_reported_and_left_out(tmp_path):
    root = clothes(tmp_path / "clothes", {"black_jeans": 2, "black": 2, "red_shirt": 1})
    save_image(root / "loose.png")
    with pytest.warns(ReaderWarning) as record:
        ds = read_folders(root, separator="_", tasks=["color", "item"])
    message = str(record[0].message)
    assert "3 of 6 samples skipped" in message
    assert "black/000.png" in message and "folder 'black' does not split into 2" in message
    assert "loose.png: not inside a label folder" in message
    assert len(ds) == 3 and sorted(Path(s.path).name for s in ds.skipped) == ["000.png", "001.png", "loose.png"]
    assert ds.vocabularies["color"] == ["black", "red"]  # nothing from the malformed folder


def test_folder_errors_say_what_to_do(tmp_path):
    root = clothes(tmp_path / "clothes")
    with pytest.raises(ValueError, match="separator= or pattern="):
        read_folders(root, tasks=["color", "item"])
    with pytest.raises(ValueError, match="no named group in pattern"):
        read_folders(root, r"(?P<color>[a-z]+)_\w+", tasks=["color", "item"])
    with pytest.raises(ValueError, match="not both"):
        read_folders(root, r"(?P<c>\w+)", separator="_")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_folders(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="on_error must be one of 'error', 'skip', got 'ignore'"):
        read_folders(root, separator="_", tasks=["color", "item"], on_error="ignore")
    with pytest.raises(ValueError, match=r"No folder under .* can be read: each name does not match pattern"):
        read_folders(root, r"(?P<a>\d+)")


# -- vocabularies ---------------------------------------------------------------------------------------------
def test_vocabularies_round_trip_and_fix_the_indices_of_another_split(tmp_path):
    train = read_folders(clothes(tmp_path / "train"), separator="_", tasks=["color", "item"])
    train.save_vocabularies(tmp_path / "vocab.json")
    assert json.loads((tmp_path / "vocab.json").read_text()) == train.vocabularies
    assert load_vocabularies(tmp_path / "vocab.json") == train.vocabularies

    val_root = clothes(tmp_path / "val", {"red_shirt": 1, "blue_jeans": 1})
    alone = read_folders(val_root, separator="_", tasks=["color", "item"])
    assert alone.vocabularies["color"] == ["blue", "red"]  # its own, different indices
    val = read_folders(val_root, separator="_", tasks=["color", "item"], vocabularies=tmp_path / "vocab.json")
    assert val.vocabularies == train.vocabularies and val.tasks == train.tasks
    assert val.labels("color").tolist() == [1, 2] and val.labels("item").tolist() == [1, 2]
    # Predictions map back to names through the vocabulary (or the Task's class names).
    assert [val.tasks["color"].class_names[k] for k in val.labels("color")] == ["blue", "red"]


def test_unknown_class_in_another_split_is_an_error_or_a_missing_label(tmp_path):
    train = read_folders(clothes(tmp_path / "train"), separator="_", tasks=["color", "item"])
    val_root = clothes(tmp_path / "val", {"green_jeans": 2, "red_shirt": 1})
    unknown = r"(?s)Task 'color'.*2 sample\(s\).*outside its vocabulary.*green.*unknown='missing'"
    with pytest.raises(ValueError, match=unknown):
        read_folders(val_root, separator="_", tasks=["color", "item"], vocabularies=train.vocabularies)
    with pytest.warns(ReaderWarning, match=r"(?s)2 label\(s\) dropped.*green"):
        val = read_folders(
            val_root, separator="_", tasks=["color", "item"], vocabularies=train.vocabularies, unknown="missing"
        )
    assert len(val) == 3 and val.task_indices("color").tolist() == [2]
    assert val.task_indices("item").tolist() == [0, 1, 2]
    x, y = val[0]
    assert set(y) == {"item"}
    batch = collate([val[i] for i in range(3)])
    assert batch.masks["color"].tolist() == [False, False, True] and batch.masks["item"].all()
    assert batch.targets["color"][batch.masks["color"]].tolist() == [2]


def test_declared_task_objects_keep_their_settings(tmp_path):
    root = clothes(tmp_path / "clothes")
    color = hn.Task("color", "multiclass", num_classes=3, weight=2.0, loss_options={"label_smoothing": 0.1})
    ds = read_folders(root, separator="_", tasks=[color, "item"])
    assert ds.tasks["color"].weight == 2.0 and ds.tasks["color"].loss_options == {"label_smoothing": 0.1}
    assert ds.tasks["color"].class_names == ["black", "blue", "red"]
    with pytest.raises(ValueError, match=r"num_classes=4 but its vocabulary has 3 names"):
        read_folders(root, separator="_", tasks={"color": {"kind": "multiclass", "num_classes": 4}, "item": None})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['classes'\]"):
        read_folders(root, separator="_", tasks={"color": {"classes": 3}, "item": None})


def test_vocabulary_file_is_checked(tmp_path):
    with pytest.raises(ValueError, match=r"vocabularies= has task\(s\) \['colour'\] that are not read here"):
        read_folders(clothes(tmp_path / "c"), separator="_", tasks=["color", "item"], vocabularies={"colour": ["a"]})
    (tmp_path / "v.json").write_text('{"color": ["red", "red"]}')
    with pytest.raises(ValueError, match="twice"):
        load_vocabularies(tmp_path / "v.json")
    (tmp_path / "w.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_vocabularies(tmp_path / "w.json")


# -- labels in file names ----------------------------------------------------------------------------------
UTK = {
    "30_0_3_20170117145159065.jpg.chip.jpg": (30.0, 0, 3),
    "1_1_0_20161219203650636.jpg.chip.jpg": (1.0, 1, 0),
    "85_1_4_20170120134639935.jpg.chip.jpg": (85.0, 1, 4),
    "26_0_2_20170116174525125.jpg.chip.jpg": (26.0, 0, 2),
}
UTK_BAD = {
    "39_1_20170116174525125.jpg.chip.jpg": "does not match",  # no race field (real UTKFace name)
    "50_0_7_20170109150557335.jpg.chip.jpg": "race='7' is not a class index in [0, 5)",
    "44_2_1_20170109142408075.jpg.chip.jpg": "gender='2' is not a class index in [0, 2)",
}


def utkface(root: Path, names) -> Path:
    for k, name in enumerate(names):
        save_image(root / name, seed=k, fmt="JPEG")
    (root / "README.txt").write_text("not an image")
    return root


def test_utkface_names_give_age_gender_race(tmp_path):
    root = utkface(tmp_path / "UTKFace", list(UTK) + list(UTK_BAD))
    with pytest.warns(ReaderWarning) as record:
        ds = read_filenames(root, UTKFACE_PATTERN, tasks=UTKFACE_TASKS, image_size=8)
    assert len(ds) == 4
    truth = [UTK[Path(p).name] for p in ds.paths]
    np.testing.assert_array_equal(ds.labels("age"), [t[0] for t in truth])
    np.testing.assert_array_equal(ds.labels("gender"), [t[1] for t in truth])
    np.testing.assert_array_equal(ds.labels("race"), [t[2] for t in truth])
    assert ds.tasks["age"].kind == "regression" and ds.labels("age").dtype.kind == "f"
    assert ds.tasks["gender"].kind == "binary" and ds.tasks["gender"].class_names == ["male", "female"]
    assert ds.tasks["race"].num_classes == 5 and ds.vocabularies == {}
    message = str(record[0].message)
    assert "3 of 7 samples skipped" in message
    for name, reason in UTK_BAD.items():
        assert name in message and reason in message
    assert {Path(s.path).name for s in ds.skipped} == set(UTK_BAD)
    x, y = ds[0]
    assert x.shape == (3, 8, 8) and y["age"].dtype == torch.float32 and y["race"].dtype == torch.int64


def test_skip_warning_lists_the_first_ten_and_counts_the_rest(tmp_path):
    root = utkface(tmp_path / "faces", list(UTK) + [f"{k}_1_2017.jpg" for k in range(13)])
    with pytest.warns(ReaderWarning) as record:
        ds = read_filenames(root, UTKFACE_PATTERN, tasks=UTKFACE_TASKS)
    message = str(record[0].message)
    assert "13 of 17 samples skipped" in message and "... and 3 more" in message
    assert message.count("does not match") == 10 and len(ds.skipped) == 13


def test_file_name_fields_optional_groups_and_converters(tmp_path):
    names = ["m_12.5_a.png", "f_3_b.png", "f_x_c.png", "q_1_d.png", "m__e.png"]
    root = utkface(tmp_path / "people", names)
    with pytest.warns(ReaderWarning) as record:
        ds = read_filenames(
            root,
            r"(?P<sex>[a-z])_(?P<score>[0-9.x]+)?_\w\.png",
            tasks={"sex": "binary", "score": "regression"},
            converters={"sex": {"m": 0, "f": 1}.__getitem__},
        )
    message = str(record[0].message)
    assert "f_x_c.png: score='x' is not a finite number" in message
    assert "q_1_d.png: sex='q': converter failed (KeyError" in message
    assert [Path(p).name for p in ds.paths] == ["f_3_b.png", "m_12.5_a.png", "m__e.png"]
    assert ds.labels("sex").tolist() == [1, 0, 0]
    assert ds.task_indices("score").tolist() == [0, 1]  # m__e.png: the optional group did not match
    np.testing.assert_allclose(ds.labels("score"), [3.0, 12.5])


def test_integer_fields_need_a_declared_kind(tmp_path):
    root = utkface(tmp_path / "faces", list(UTK))
    with pytest.raises(ValueError, match=r"Task 'age'.*integers.*declare the kind"):
        read_filenames(root, UTKFACE_PATTERN)


# -- labels without opening images -------------------------------------------------------------------------
def test_labels_and_indices_never_open_an_image(tmp_path, monkeypatch):
    clothes_root = clothes(tmp_path / "clothes")
    faces_root = utkface(tmp_path / "faces", list(UTK))
    manifest = tmp_path / "faces.csv"
    manifest.write_text("path,race\n" + "".join(f"faces/{name},{k % 2}\n" for k, name in enumerate(UTK)))

    def forbidden(*args, **kwargs):
        raise AssertionError("an image was opened")

    monkeypatch.setattr(Image, "open", forbidden)
    folders = read_folders(clothes_root, separator="_", tasks=["color", "item"])
    faces = read_filenames(faces_root, UTKFACE_PATTERN, tasks=UTKFACE_TASKS)
    listed = read_manifest(manifest, tasks={"race": "binary"})
    assert listed.labels("race").tolist() == [0, 1, 0, 1]
    assert folders.labels("item").tolist() == [1, 1, 0, 1, 1, 2, 2, 2]
    assert folders.class_counts("color").tolist() == [2, 3, 3]
    assert faces.task_indices("race").tolist() == [0, 1, 2, 3]
    sampler = hn.data.TaskBatchSampler(folders, batch_size=4, schedule="round_robin", balance="inverse", seed=0)
    assert sum(len(b) for b in sampler) > 0
    with pytest.raises(AssertionError, match="an image was opened"):
        folders[0]


# -- images: transform, bad files ------------------------------------------------------------------------
def test_default_transform_matches_the_formula(tmp_path):
    pixels = save_image(tmp_path / "a.png", size=(4, 6))
    image = Image.open(tmp_path / "a.png")
    x = default_transform()(image)
    expected = torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32) / 255)
    np.testing.assert_allclose(x.numpy(), expected.numpy(), rtol=1e-6)
    mean, std = (0.5, 0.25, 0.125), (0.5, 2.0, 4.0)
    y = default_transform(mean=mean, std=std)(image)
    formula = (expected - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    np.testing.assert_allclose(y.numpy(), formula.numpy(), rtol=1e-6)
    assert default_transform(size=(3, 5))(image).shape == (3, 3, 5)
    assert default_transform(size=7)(image).shape == (3, 7, 7)
    grey = default_transform(grayscale=True)(image)
    expected_grey = np.asarray(image.convert("L"), dtype=np.float32) / 255
    np.testing.assert_allclose(grey.numpy(), expected_grey[None], rtol=1e-6)
    with pytest.raises(ValueError, match="both mean and std"):
        default_transform(mean=mean)
    with pytest.raises(ValueError, match="1 or 3 values"):
        default_transform(mean=(0.5, 0.5), std=(1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        default_transform(size=(0, 3))


def test_own_transform_gets_an_rgb_image_and_excludes_image_size(tmp_path):
    root = tmp_path / "grey"
    for k, folder in enumerate(["cat", "dog"]):
        (root / folder).mkdir(parents=True)
        Image.fromarray(np.full((3, 4), 100 * k, dtype=np.uint8)).save(root / folder / "a.png")  # mode L
    ds = read_folders(root, transform=lambda image: (image.mode, image.size))
    assert ds[0][0] == ("RGB", (4, 3))
    with pytest.raises(ValueError, match="image_size= sets the size of the default transform"):
        read_folders(root, transform=lambda image: image, image_size=8)


def corrupt_clothes(root: Path) -> Path:
    clothes(root)
    (root / "red_shirt" / "broken.png").write_bytes(b"this is not a png")
    return root


def test_verify_names_the_bad_file(tmp_path):
    root = corrupt_clothes(tmp_path / "clothes")
    message = r"(?s)1 of 9 image files cannot be read.*red_shirt/broken\.png.*on_error='skip'"
    with pytest.raises(ImageReadError, match=message):
        read_folders(root, separator="_", tasks=["color", "item"], verify=True)


def test_on_error_skip_leaves_bad_files_out_and_reports_them(tmp_path):
    root = corrupt_clothes(tmp_path / "clothes")
    with pytest.warns(ReaderWarning, match=r"(?s)1 of 9 samples skipped.*broken\.png: cannot decode"):
        ds = read_folders(root, separator="_", tasks=["color", "item"], on_error="skip")
    assert len(ds) == 8 and [Path(s.path).name for s in ds.skipped] == ["broken.png"]
    assert all(ds[i][0].shape == (3, 6, 5) for i in range(len(ds)))


def test_bad_file_met_lazily_names_the_file(tmp_path):
    root = corrupt_clothes(tmp_path / "clothes")
    ds = read_folders(root, separator="_", tasks=["color", "item"])  # verify=False: nothing opened
    k = [Path(p).name for p in ds.paths].index("broken.png")
    with pytest.raises(ImageReadError, match=r"Cannot decode image .*red_shirt/broken\.png: .*verify=True"):
        ds[k]
    # In a worker process too: the error that reaches the training loop names the file.
    loader = DataLoader(ds, batch_size=len(ds), num_workers=1, collate_fn=collate)
    with pytest.raises(ImageReadError, match=r"red_shirt/broken\.png"):
        next(iter(loader))
    Path(ds.paths[0]).unlink()
    with pytest.raises(ImageReadError, match=r"black_jeans/000\.png does not exist"):
        ds[0]


def test_decode_check_names_a_truncated_image(tmp_path):
    root = clothes(tmp_path / "clothes", {"a_b": 1, "c_d": 1})
    big = tmp_path / "big.png"
    save_image(big, size=(64, 64))
    data = big.read_bytes()
    (root / "c_d" / "cut.png").write_bytes(data[: int(len(data) * 0.9)])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_folders(root, separator="_", tasks=["x", "y"], verify="decode")


# -- picklable, workers ---------------------------------------------------------------------------------------
def test_dataset_pickles_and_loads_in_two_workers(tmp_path):
    root = clothes(tmp_path / "clothes")
    ds = read_folders(root, separator="_", tasks=["color", "item"], image_size=(4, 4))
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.paths == ds.paths and copy.vocabularies == ds.vocabularies
    np.testing.assert_array_equal(copy[5][0].numpy(), ds[5][0].numpy())
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [b.inputs.shape[0] for b in batches] == [3, 3, 2]
    colors = torch.cat([b.targets["color"] for b in batches])
    np.testing.assert_array_equal(colors.numpy(), ds.labels("color"))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=8), max_size=20))
def test_packed_strings_round_trip(strings):
    packed = pickle.loads(pickle.dumps(PackedStrings(strings)))
    assert packed.tolist() == strings and [packed[k] for k in range(len(strings))] == strings


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["cat", "dog", "emu", "yak", ""]), min_size=1, max_size=30))
def test_class_names_map_through_the_sorted_vocabulary(cells):
    assume(len(set(c for c in cells if c)) >= 2)
    encoded = encode_column(declare_tasks(["animal"], default_kind="multiclass")[0], text_cells(cells))
    assert encoded.vocabulary == sorted(set(c for c in cells if c))
    decoded = [encoded.vocabulary[v] if v >= 0 else "" for v in encoded.values]
    assert decoded == cells


# -- parts of one read, vocabularies through a checkpoint -----------------------------------------------------
def test_split_gives_disjoint_parts_with_the_same_tasks_and_indices(tmp_path):
    root = clothes(tmp_path / "clothes", {"black_jeans": 6, "blue_dress": 5, "red_shirt": 9})
    ds = read_folders(root, separator="_", tasks=["color", "item"], image_size=4)
    parts = ds.split([0.6, 0.25, 0.15], seed=3)
    assert [len(p) for p in parts] == [12, 5, 3]
    paths = [p for part in parts for p in part.paths]
    assert sorted(paths) == sorted(ds.paths)  # disjoint and complete
    for part in parts:
        assert part.tasks == ds.tasks and part.vocabularies == ds.vocabularies and isinstance(part, type(ds))
        truth = expected_labels(part, root)
        assert np.array(part.vocabularies["color"])[part.labels("color")].tolist() == truth["color"]
        np.testing.assert_array_equal(part[0][0].numpy(), ds[ds.paths.index(part.paths[0])][0].numpy())
    assert [p.paths for p in ds.split([0.6, 0.25, 0.15], seed=3)] == [p.paths for p in parts]
    assert [p.paths for p in ds.split([0.6, 0.25, 0.15], seed=4)] != [p.paths for p in parts]
    picked = ds.subset([5, 0, -1])
    assert picked.paths == [ds.paths[5], ds.paths[0], ds.paths[-1]]
    assert picked.labels("item").tolist() == ds.labels("item")[[5, 0, -1]].tolist()


def test_split_keeps_missing_labels_and_tabular_tensors(tmp_path):
    rows = "".join(f"{k},{k % 3 or ''},{'ab'[k % 2]}\n" for k in range(20))
    manifest = tmp_path / "t.csv"
    manifest.write_text("x,score,grade\n" + rows)
    ds = read_manifest(manifest, feature_columns=["x"], tasks={"score": "regression", "grade": "multiclass"})
    train, test = ds.split([0.5, 0.5], seed=0)
    assert isinstance(train.samples, torch.utils.data.TensorDataset)
    for part in (train, test):
        x = part.samples.tensors[0][:, 0].numpy().astype(int)
        np.testing.assert_array_equal(part.task_indices("score"), np.flatnonzero(x % 3 != 0))
        assert part.labels("grade").tolist() == (x % 2).tolist()
        batch = collate(part.__getitems__(list(range(len(part)))))
        assert batch.masks["score"].tolist() == (x % 3 != 0).tolist()


def test_split_and_subset_errors_say_what_is_wrong(tmp_path):
    ds = read_folders(clothes(tmp_path / "clothes"), separator="_", tasks=["color", "item"])
    with pytest.raises(ValueError, match=r"positive shares summing to 1"):
        ds.split([0.5, 0.4])
    with pytest.raises(ValueError, match=r"leave part\(s\) \[1\] empty"):
        ds.split([0.99, 0.01])
    with pytest.raises(IndexError, match=r"\[0, 8\)"):
        ds.subset([0, 8])
    manifest = tmp_path / "t.csv"
    manifest.write_text("x,score\n1,0.5\n2,\n3,\n")
    with pytest.raises(ValueError, match=r"Task 'score' has no labelled sample"):
        read_manifest(manifest, feature_columns=["x"], tasks={"score": "regression"}).subset([1, 2])


def test_vocabularies_travel_in_the_checkpoint_to_the_test_split(tmp_path):
    train = read_folders(clothes(tmp_path / "train"), separator="_", tasks=["color", "item"], image_size=8)
    model = hn.models.HydraNet(hn.models.ConvNet(3, widths=(4,)), train.tasks)
    trainer = hn.Trainer(model, progress=False, out_dir=tmp_path / "run", checkpoint="last", tensorboard=False)
    trainer.fit(DataLoader(train, batch_size=4, collate_fn=collate), epochs=1)
    saved = hn.train.load_checkpoint(tmp_path / "run" / "last.pt")["tasks"]
    tasks = {name: hn.Task.from_dict(spec) for name, spec in saved.items()}
    assert {name: list(t.class_names) for name, t in tasks.items()} == train.vocabularies

    test_root = clothes(tmp_path / "test", {"red_shirt": 2, "blue_jeans": 1})  # black and dress are absent
    test = read_folders(test_root, separator="_", tasks=tasks, image_size=8)
    assert test.tasks == tasks and test.labels("color").tolist() == [1, 2, 2]
    predictions = trainer.predict(DataLoader(test, batch_size=3, collate_fn=collate))
    names = [tasks["color"].class_names[k] for k in predictions["color"].argmax(1).tolist()]
    assert len(names) == 3 and set(names) <= {"black", "blue", "red"}


def test_trained_tasks_keep_integer_class_cells_as_indices(tmp_path):
    train = read_filenames(utkface(tmp_path / "train", list(UTK)), UTKFACE_PATTERN, tasks=UTKFACE_TASKS)
    test = read_filenames(utkface(tmp_path / "test", list(UTK)[:2]), UTKFACE_PATTERN, tasks=train.tasks)
    assert test.labels("race").tolist() == [UTK[Path(p).name][2] for p in test.paths]
    assert test.tasks["gender"].class_names == ["male", "female"] and test.vocabularies == {}


# -- stratified train / val / test split ------------------------------------------------------------------
def faces(tmp_path: Path, n_per_race=(40, 20, 10, 6, 4)) -> "hn.data.readers.ReaderDataset":
    names, k = [], 0
    for race, count in enumerate(n_per_race):
        for j in range(count):
            names.append(f"{20 + j}_{j % 2}_{race}_2017011714{k:07d}.jpg.chip.jpg")
            k += 1
    root = tmp_path / "faces"
    for name in names:
        root.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")  # labels come from names: no image is opened
    return read_filenames(root, UTKFACE_PATTERN, tasks=UTKFACE_TASKS)


def test_split_val_test_is_stratified_by_the_first_class_task(tmp_path):
    ds = faces(tmp_path)  # 80 samples; races of 40, 20, 10, 6, 4; gender (binary) comes first
    train, val, test = ds.split(val=0.25, test=0.25, seed=0, stratify="race")
    assert (len(train), len(val), len(test)) == (40, 20, 20)  # exact sizes: rint(80 * 0.5), 20, the rest
    for part in (val, test):
        counts = np.bincount(part.labels("race"), minlength=5)
        expected = np.array([40, 20, 10, 6, 4]) * 0.25  # each class in the part's proportion
        assert np.all(np.abs(counts - expected) <= 1), counts
        assert part.vocabularies == ds.vocabularies and part.tasks == ds.tasks
    assert sorted(p for part in (train, val, test) for p in part.paths) == sorted(ds.paths)
    # Deterministic by seed; another seed, other parts.
    again = ds.split(val=0.25, test=0.25, seed=0, stratify="race")
    assert [p.paths for p in again] == [p.paths for p in (train, val, test)]
    assert ds.split(val=0.25, test=0.25, seed=1, stratify="race").val.paths != val.paths
    # Default: the first class task (gender); a regression task is never stratified on.
    parts = ds.split(val=0.5, seed=3)
    assert parts.test is None and len(parts.val) == 40
    assert np.bincount(parts.val.labels("gender")).tolist() == [20, 20]
    with pytest.raises(ValueError, match=r"stratify='age' is a regression task.*gender, race.*stratify=None"):
        ds.split(val=0.1, stratify="age")
    with pytest.raises(ValueError, match=r"Unknown stratify task 'rac'. Did you mean 'race'\?"):
        ds.split(val=0.1, stratify="rac")


def test_an_unstratified_split_draws_classes_by_chance(tmp_path):
    # Against the stratified split above: a plain shuffle (stratify=None) misses the 25 % share of some
    # class for some seed, which the stratified split never does (the reason to stratify).
    ds = faces(tmp_path)
    truth = np.array([40, 20, 10, 6, 4]) * 0.25

    def worst(stratify):
        return max(
            np.abs(np.bincount(ds.split(val=0.25, seed=s, stratify=stratify).val.labels("race"), minlength=5) - truth).max()
            for s in range(10)
        )

    assert worst("race") <= 1 < worst(None)


def test_split_keeps_the_fraction_form_and_checks_its_arguments(tmp_path):
    ds = faces(tmp_path)
    parts = ds.split([0.5, 0.3, 0.2], seed=2)
    assert isinstance(parts, list) and [len(p) for p in parts] == [40, 24, 16]
    with pytest.raises(ValueError, match="Give fractions=\\[...\\] or val= / test=, not both"):
        ds.split([0.5, 0.5], val=0.1)
    with pytest.raises(ValueError, match=r"val \+ test < 1"):
        ds.split(val=0.6, test=0.4)
    with pytest.raises(ValueError, match=r"val must be a finite number >= 0.0 and <= 1.0, got -0.1"):
        ds.split(val=-0.1)
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0"):
        ds.split(val=0.1, seed=-1)


def test_split_indices_formula_on_hand_counts():
    from hydranet.data.split import split_indices

    strata = np.repeat([0, 1, 2], [6, 3, 1])
    parts = split_indices(10, [0.5, 0.3, 0.2], seed=0, strata=strata)
    assert [len(p) for p in parts] == [5, 3, 2]  # rint(5), rint(8) - 5, the rest
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(10))
    # Class 0 (6 samples) gives 3, 1.8, 1.2 by proportion: each part within one of that.
    assert [int(np.sum(strata[p] == 0)) for p in parts] in ([3, 2, 1], [3, 1, 2], [4, 1, 1], [2, 2, 2])


# -- images in sub-folders with recursive=False ---------------------------------------------------------------
def test_images_only_in_sub_folders_need_recursive(tmp_path):
    names = list(UTK)
    root = tmp_path / "UTKFace"
    utkface(root / "part1", names[:2])
    utkface(root / "part2", names[2:])
    with pytest.raises(ValueError, match=r"no image in .*UTKFace itself, but 4 in its sub-folders part1/ \(2\), "
                       r"part2/ \(2\): pass recursive=True"):
        read_filenames(root, UTKFACE_PATTERN, tasks=UTKFACE_TASKS)
    assert len(read_filenames(root, UTKFACE_PATTERN, tasks=UTKFACE_TASKS, recursive=True)) == 4


def test_images_in_sub_folders_beside_top_level_ones_are_counted_in_one_warning(tmp_path):
    names = list(UTK)
    root = utkface(tmp_path / "UTKFace", names[:1])
    utkface(root / "part2", names[1:])
    with pytest.warns(ReaderWarning) as record:
        ds = read_filenames(root, UTKFACE_PATTERN, tasks=UTKFACE_TASKS)
    messages = [str(w.message) for w in record if "sub-folders" in str(w.message)]
    assert len(messages) == 1 and "3 image(s) in sub-folders" in messages[0] and "recursive=True" in messages[0]
    assert len(ds) == 1
    with pytest.raises(TypeError, match="recursive must be True or False, got 'false'"):
        read_filenames(root, UTKFACE_PATTERN, tasks=UTKFACE_TASKS, recursive="false")
