"""Manifest (CSV / JSON / Parquet, images or tabular) and detection readers (hydranet.data.readers)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hydranet as hn
from hydranet.data import collate
from hydranet.data.readers import ImageReadError, ReaderWarning, default_transform, read_detection, read_manifest


def save_image(path: Path, size=(6, 5), seed=0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- image manifests ---------------------------------------------------------------------------------------
def test_paths_relative_absolute_and_windows_style(tmp_path):
    data = tmp_path / "data"
    pixels = [save_image(data / "images" / "a" / f"{k}.png", seed=k) for k in range(4)]
    elsewhere = tmp_path / "other" / "x.png"
    pixels.append(save_image(elsewhere, seed=9))
    manifest = write(
        data / "train.csv",
        "path,species\n"
        "images\\a\\0.png,cat\n"  # Windows separators
        "images/a/1.png,dog\n"
        "./images/a/2.png,cat\n"
        f"{data / 'images' / 'a' / '3.png'},dog\n"  # absolute
        f"{elsewhere},cat\n",
    )
    with pytest.raises(ValueError, match=r"(?s)train.csv: 1 path\(s\) lead outside the root folder .*row 6: "):
        read_manifest(manifest, tasks=["species"])  # `elsewhere` is not under the manifest's folder
    ds = read_manifest(manifest, tasks=["species"], allow_outside_root=True)
    expected = [data / "images" / "a" / f"{k}.png" for k in range(4)] + [elsewhere]
    assert [Path(p).resolve() for p in ds.paths] == expected
    for k in range(5):
        x, y = ds[k]
        np.testing.assert_allclose(x.numpy(), pixels[k].transpose(2, 0, 1) / 255, rtol=1e-6)
    assert ds.labels("species").tolist() == [0, 1, 0, 1, 0] and ds.vocabularies == {"species": ["cat", "dog"]}

    # root= moves the base of relative paths, not absolute ones.
    moved = write(tmp_path / "lists" / "train.csv", "path,species\nimages\\a\\1.png,dog\nimages/a/2.png,cat\n")
    ds = read_manifest(moved, tasks=["species"], root=data)
    assert [Path(p) for p in ds.paths] == [data / "images" / "a" / "1.png", data / "images" / "a" / "2.png"]


def faces_csv(tmp_path: Path) -> Path:
    for k in range(5):
        save_image(tmp_path / f"{k}.png", seed=k)
    return write(
        tmp_path / "faces.csv",
        "path,age,smile,race\n"
        "0.png,31.5,1,2\n"
        "1.png,,0,\n"  # age and race missing
        "2.png,7,,-1\n"  # smile missing; race -1 is missing too
        "3.png,44,1,4\n"
        "4.png,60.25,,0\n",
    )


FACE_TASKS = {"age": "regression", "smile": "binary", "race": {"kind": "multiclass", "num_classes": 5}}


def test_empty_cells_are_missing_labels_masked_in_batches(tmp_path):
    ds = read_manifest(faces_csv(tmp_path), tasks=FACE_TASKS, image_size=4)
    assert ds.task_indices("age").tolist() == [0, 2, 3, 4]
    np.testing.assert_allclose(ds.labels("age"), [31.5, 7, 44, 60.25])
    assert ds.task_indices("smile").tolist() == [0, 1, 3] and ds.labels("smile").tolist() == [1, 0, 1]
    assert ds.task_indices("race").tolist() == [0, 3, 4] and ds.labels("race").tolist() == [2, 4, 0]
    assert set(ds[1][1]) == {"smile"} and set(ds[2][1]) == {"age"}
    batch = collate([ds[i] for i in range(5)])
    assert batch.inputs.shape == (5, 3, 4, 4)
    assert batch.masks["age"].tolist() == [True, False, True, True, True]
    assert batch.masks["smile"].tolist() == [True, True, False, True, False]
    assert batch.masks["race"].tolist() == [True, False, False, True, True]
    assert batch.targets["race"][batch.masks["race"]].tolist() == [2, 4, 0]
    assert ds.tasks["race"].num_classes == 5 and ds.vocabularies == {}


def test_invalid_cells_exclude_their_rows_with_a_report(tmp_path):
    for k in range(4):
        save_image(tmp_path / f"{k}.png", seed=k)
    manifest = write(tmp_path / "m.csv", "path,age,race\n0.png,abc,1\n1.png,3,9\n2.png,5,2\n,4,1\n")
    with pytest.warns(ReaderWarning) as record:
        ds = read_manifest(manifest, tasks={"age": "regression", "race": {"kind": "multiclass", "num_classes": 5}})
    message = str(record[0].message)
    assert "3 of 4 samples skipped" in message
    assert "0.png: age='abc' is not a finite number" in message
    assert "1.png: race='9' is not a class index in [0, 5)" in message
    assert "row 5: empty 'path'" in message
    assert len(ds) == 1 and Path(ds.paths[0]).name == "2.png"


def test_kind_inference_and_clear_column_errors(tmp_path):
    for k in range(3):
        save_image(tmp_path / f"{k}.png", seed=k)
    manifest = write(tmp_path / "m.csv", "path,height,color,count\n0.png,1.5,red,3\n1.png,2.25,blue,4\n2.png,,red,5\n")
    ds = read_manifest(manifest, tasks=["height", "color"])
    assert ds.tasks["height"].kind == "regression" and ds.tasks["color"].kind == "multiclass"
    with pytest.raises(ValueError, match=r"Task 'count'.*integers.*declare the kind"):
        read_manifest(manifest, tasks=["count"])
    with pytest.raises(ValueError, match=r"has no column 'colour'. Did you mean 'color'\?"):
        read_manifest(manifest, tasks=["colour"])
    with pytest.raises(ValueError, match="not both"):
        read_manifest(manifest, tasks=["color"], path_column="path", feature_columns=["height"])
    bad = write(tmp_path / "bad.csv", "path,color\n0.png;red\n")
    with pytest.raises(ValueError, match=r"row 2 has 1 cells for 2 columns.*delimiter"):
        read_manifest(bad, tasks=["color"])


def test_missing_file_in_manifest_named_up_front_or_on_load(tmp_path):
    save_image(tmp_path / "0.png")
    manifest = write(tmp_path / "m.csv", "path,color\n0.png,red\nmissing.png,blue\n")
    with pytest.raises(ImageReadError, match=r"(?s)missing\.png: file does not exist"):
        read_manifest(manifest, tasks=["color"], verify=True)
    ds = read_manifest(manifest, tasks=["color"])
    with pytest.raises(ImageReadError, match=r"missing\.png does not exist; run with verify=True"):
        ds[1]


def test_json_manifest(tmp_path):
    for k in range(3):
        save_image(tmp_path / "img" / f"{k}.png", seed=k)
    records = [
        {"path": "img/0.png", "age": 30, "smiling": True},
        {"path": "img\\1.png", "age": None, "smiling": False},
        {"path": "img/2.png", "age": 4.5},
    ]
    manifest = write(tmp_path / "m.json", json.dumps(records))
    ds = read_manifest(manifest, tasks={"age": "regression", "smiling": "binary"})
    assert ds.task_indices("age").tolist() == [0, 2] and ds.labels("smiling").tolist() == [1, 0]


# -- tabular manifests ----------------------------------------------------------------------------------------
def test_tabular_feature_columns(tmp_path):
    manifest = write(
        tmp_path / "t.csv",
        "f1,f2,churn,plan,spend\n"
        "1,2,1,gold,10.5\n"
        "3,4.5,0,basic,\n"
        "5,,1,gold,3\n"  # a feature is empty: the row cannot be an input
        "-1,0.25,,basic,7\n",
    )
    with pytest.warns(ReaderWarning, match=r"row 4: feature 'f2' is empty"):
        tasks = {"churn": "binary", "plan": "multiclass", "spend": "regression"}
        ds = read_manifest(manifest, feature_columns=["f1", "f2"], tasks=tasks)
    assert len(ds) == 3 and ds.paths is None
    assert isinstance(ds.samples, torch.utils.data.TensorDataset)
    x, y = ds[2]
    np.testing.assert_allclose(x.numpy(), [-1, 0.25])
    assert set(y) == {"plan", "spend"} and y["plan"] == 0 and y["spend"] == 7
    assert ds.vocabularies == {"plan": ["basic", "gold"]}
    assert ds.task_indices("spend").tolist() == [0, 2]
    batch = collate(ds.__getitems__([0, 1, 2]))
    np.testing.assert_allclose(batch.inputs.numpy(), [[1, 2], [3, 4.5], [-1, 0.25]])
    assert batch.masks["churn"].tolist() == [True, True, False] and batch.masks["spend"].tolist() == [True, False, True]
    assert batch.targets["churn"][batch.masks["churn"]].tolist() == [1, 0]
    with pytest.raises(ValueError, match="apply to images"):
        read_manifest(manifest, feature_columns=["f1"], tasks=["plan"], image_size=8)


def test_parquet_needs_pandas_and_reads_like_csv(tmp_path, monkeypatch):
    import pandas as pd
    manifest = tmp_path / "t.parquet"
    manifest.write_bytes(b"PAR1")
    frame = pd.DataFrame(
        {"x": [1.0, 2.0, 3.0], "grade": ["a", None, "b"], "score": [0.5, np.nan, 2.0], "ok": [True, False, True]}
    )
    monkeypatch.setattr(pd, "read_parquet", lambda path: frame)
    tasks = {"grade": "multiclass", "score": "regression", "ok": "binary"}
    ds = read_manifest(manifest, feature_columns=["x"], tasks=tasks)
    assert ds.task_indices("grade").tolist() == [0, 2] and ds.labels("grade").tolist() == [0, 1]
    np.testing.assert_allclose(ds.labels("score"), [0.5, 2.0])
    assert ds.labels("ok").tolist() == [1, 0, 1]
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"hydranet\[tabular\]"):
        read_manifest(manifest, feature_columns=["x"], tasks=["grade"])


# -- detection -------------------------------------------------------------------------------------------------
def detection_images(root: Path) -> dict[str, tuple[int, int]]:
    sizes = {"a.png": (20, 10), "b.png": (8, 16), "c.png": (10, 10), "d.png": (12, 12)}  # name: (H, W)
    for k, (name, size) in enumerate(sizes.items()):
        save_image(root / name, size=size, seed=k)
    return sizes


def test_json_boxes_are_normalised_and_collated_as_lists(tmp_path):
    sizes = detection_images(tmp_path)
    boxes = {"a.png": [[0, 0, 10, 20], [2, 5, 4, 15]], "b.png": [], "d.png": [[1, 2, 3, 4]]}
    records = [
        {"path": "a.png", "boxes": boxes["a.png"], "label": "cat"},
        {"path": "b.png", "boxes": [], "label": "dog"},  # annotated: no box
        {"path": "c.png", "label": "dog"},  # boxes not annotated: missing
        {"path": "d.png", "boxes": boxes["d.png"]},  # label missing
    ]
    ds = read_detection(write(tmp_path / "det.json", json.dumps(records)), image_size=(8, 8))
    assert ds.tasks["boxes"] == hn.Task("boxes", "regression", dim=4, ragged=True)
    assert ds.task_indices("boxes").tolist() == [0, 1, 3] and ds.task_indices("label").tolist() == [0, 1, 2]
    for k, name in zip(ds.task_indices("boxes"), ["a.png", "b.png", "d.png"]):
        h, w = sizes[name]
        expected = np.array(boxes[name], dtype=np.float64).reshape(-1, 4) / [w, h, w, h]
        np.testing.assert_allclose(ds[int(k)][1]["boxes"].numpy(), expected, rtol=1e-6)
    batch = ds.collate_fn([ds[i] for i in range(4)])
    assert batch.inputs.shape == (4, 3, 8, 8)
    targets = batch.targets["boxes"]
    assert isinstance(targets, list) and [None if t is None else tuple(t.shape) for t in targets] == [
        (2, 4),
        (0, 4),
        None,
        (1, 4),
    ]
    assert batch.masks["boxes"].tolist() == [True, True, False, True]
    assert batch.masks["label"].tolist() == [True, True, True, False]
    # Normalised boxes do not depend on the size the images are resized to.
    other = read_detection(tmp_path / "det.json", image_size=(32, 16))
    for a, b in zip(ds.labels("boxes"), other.labels("boxes")):
        np.testing.assert_array_equal(a, b)


def test_pixel_boxes_follow_the_default_resize(tmp_path):
    detection_images(tmp_path)
    records = [{"path": "a.png", "boxes": [[0, 0, 10, 20], [2, 5, 4, 15]], "label": 1}]
    manifest = write(tmp_path / "det.json", json.dumps(records))
    tasks = {"label": {"kind": "multiclass", "num_classes": 3}}
    resized = read_detection(manifest, tasks=tasks, box_format="pixels", image_size=(40, 5))  # a.png: 20 x 10 -> 40 x 5
    np.testing.assert_allclose(resized.labels("boxes")[0], [[0, 0, 5, 40], [1, 10, 2, 30]])
    assert resized[0][0].shape == (3, 40, 5)
    kept = read_detection(manifest, tasks=tasks, box_format="pixels", transform=default_transform(size=None))
    np.testing.assert_allclose(kept.labels("boxes")[0], records[0]["boxes"])


def test_csv_one_row_per_box_with_landmarks_and_sizes_given(tmp_path, monkeypatch):
    detection_images(tmp_path)
    manifest = write(
        tmp_path / "det.csv",
        "path,x1,y1,x2,y2,lx,ly,label,width,height\n"
        "a.png,0,0,10,20,5,5,cat,10,20\n"
        "b.png,,,,,,,dog,16,8\n"  # an image without boxes
        "a.png,2,5,4,15,3,6,cat,10,20\n"  # rows of an image need not be adjacent
        "c.png,1,1,2,2,,,dog,10,10\n"  # boxes without landmarks
        "d.png,1,1,2,2,1,1,cat,12,12\n"
        "d.png,3,3,4,4,3,3,dog,12,12\n",  # disagrees with its first row on the label
    )

    def forbidden(*args, **kwargs):
        raise AssertionError("an image was opened")

    monkeypatch.setattr(Image, "open", forbidden)  # sizes come from the manifest: nothing is opened
    with pytest.warns(ReaderWarning, match=r"d\.png: its rows disagree on 'label'"):
        ds = read_detection(manifest, landmarks="points", landmark_columns=["lx", "ly"])
    assert [Path(p).name for p in ds.paths] == ["a.png", "b.png", "c.png"]
    np.testing.assert_allclose(ds.labels("boxes")[0], np.array([[0, 0, 10, 20], [2, 5, 4, 15]]) / [10, 20, 10, 20])
    assert ds.labels("boxes")[1].shape == (0, 4)
    assert ds.tasks["points"].dim == 2 and ds.task_indices("points").tolist() == [0, 1]
    np.testing.assert_allclose(ds.labels("points")[0], np.array([[5, 5], [3, 6]]) / [10, 20])
    assert ds.labels("label").tolist() == [0, 1, 1] and ds.vocabularies == {"label": ["cat", "dog"]}


def test_invalid_boxes_are_reported(tmp_path):
    detection_images(tmp_path)
    records = [
        {"path": "a.png", "boxes": [[5, 0, 1, 4]], "label": "cat"},  # x2 < x1
        {"path": "b.png", "boxes": [[1, 2, 3]], "label": "dog"},  # three numbers
        {"path": "c.png", "boxes": [[0, 0, 1, 1]], "label": "dog"},
        {"path": "d.png", "boxes": [[0, 0, 1, 1]], "label": "cat"},
    ]
    with pytest.warns(ReaderWarning) as record:
        ds = read_detection(write(tmp_path / "det.json", json.dumps(records)))
    message = str(record[0].message)
    assert "a.png: a box is not [x1, y1, x2, y2] with x1 <= x2" in message
    assert "b.png: 'boxes' must be a list of [x1, y1, x2, y2] boxes" in message
    assert len(ds) == 2


def test_detection_dataset_in_a_sampler_loader(tmp_path):
    detection_images(tmp_path)
    records = [{"path": f"{n}.png", "boxes": [[0, 0, 1, 1]] * (k + 1), "label": "cat"} for k, n in enumerate("abcd")]
    records[0]["label"] = "dog"
    ds = read_detection(write(tmp_path / "det.json", json.dumps(records)), image_size=6)
    batches = list(hn.data.TaskBatchSampler(ds, batch_size=2, length="all", seed=0))
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=hn.data.TaskBatchSampler(ds, batch_size=2, length="all", seed=0), collate_fn=ds.collate_fn
    )
    seen = []
    for indices, batch in zip(batches, loader, strict=True):
        assert batch.inputs.shape == (len(indices), 3, 6, 6)
        assert [tuple(b.shape) for b in batch.targets["boxes"]] == [(i + 1, 4) for i in indices]
        seen += indices
    assert sorted(seen) == [0, 1, 2, 3]


# -- bad files and Windows paths in manifests -------------------------------------------------------------
def test_corrupt_image_in_a_manifest_named_or_skipped(tmp_path):
    for k in range(3):
        save_image(tmp_path / "images" / f"{k}.png", seed=k)
    (tmp_path / "images" / "1.png").write_bytes(b"\x89PNG but cut short")
    manifest = write(tmp_path / "m.csv", "path,color\nimages\\0.png,red\nimages\\1.png,blue\nimages\\2.png,blue\n")
    with pytest.raises(ImageReadError, match=r"(?s)1 of 3 image files cannot be read.*images/1\.png: cannot decode"):
        read_manifest(manifest, tasks=["color"], verify=True)
    with pytest.warns(ReaderWarning, match=r"(?s)1 of 3 samples skipped.*images/1\.png: cannot decode"):
        ds = read_manifest(manifest, tasks=["color"], on_error="skip")
    assert [Path(p).name for p in ds.paths] == ["0.png", "2.png"] and ds.labels("color").tolist() == [1, 0]
    assert [Path(s.path).name for s in ds.skipped] == ["1.png"]
    lazy = read_manifest(manifest, tasks=["color"])
    with pytest.raises(ImageReadError, match=r"Cannot decode image .*images/1\.png"):
        lazy[1]


def test_detection_csv_with_windows_separators_and_a_corrupt_image(tmp_path):
    sizes = detection_images(tmp_path / "img")
    (tmp_path / "img" / "c.png").write_bytes(b"not an image")
    manifest = write(
        tmp_path / "det.csv",
        "path,x1,y1,x2,y2,label\n"
        "img\\a.png,0,0,5,10,cat\n"
        "img/a.png,1,1,2,2,cat\n"  # the same image, written with the other separator
        "img\\b.png,,,,,dog\n"
        "img\\c.png,1,1,2,2,dog\n",
    )
    with pytest.raises(ImageReadError, match=r"(?s)1 of 3 image files cannot be read.*img/c\.png"):
        read_detection(manifest)  # the header of every image is read for its size: c.png fails at construction
    with pytest.warns(ReaderWarning, match=r"img/c\.png: cannot decode"):
        ds = read_detection(manifest, on_error="skip", image_size=4)
    assert [Path(p).name for p in ds.paths] == ["a.png", "b.png"]
    h, w = sizes["a.png"]
    np.testing.assert_allclose(ds.labels("boxes")[0], np.array([[0, 0, 5, 10], [1, 1, 2, 2]]) / [w, h, w, h])
    assert ds.labels("boxes")[1].shape == (0, 4)
    batch = ds.collate_fn([ds[0], ds[1]])
    assert [tuple(b.shape) for b in batch.targets["boxes"]] == [(2, 4), (0, 4)]


def test_windows_absolute_paths_are_not_joined_to_the_root(tmp_path):
    from hydranet.data.readers.tables import resolve_paths

    cells = np.array(["C:\\data\\a.png", "\\\\server\\share\\b.png", "rel\\c.png", "/abs/d.png", None], dtype=object)
    paths, empty = resolve_paths(cells, tmp_path)
    assert paths[:4].tolist() == ["C:/data/a.png", "//server/share/b.png", f"{tmp_path}/rel/c.png", "/abs/d.png"]
    assert empty.tolist() == [False, False, False, False, True]


# -- trust: duplicates, conflicts, paths outside the root, encodings -----------------------------------------
def pets(tmp_path: Path, body: str, name: str = "pets.csv") -> Path:
    for k in range(3):
        save_image(tmp_path / f"{k}.png", seed=k)
    return write(tmp_path / name, "path,species\n" + body)


def test_a_file_listed_twice_with_the_same_label_is_an_error_naming_the_rows(tmp_path):
    manifest = pets(tmp_path, "0.png,cat\n1.png,dog\n./0.png,cat\n2.png,cat\n1.png,dog\n")
    with pytest.raises(ValueError) as info:
        read_manifest(manifest, tasks=["species"])
    text = str(info.value)
    assert "pets.csv: 2 row(s) list a file again with the same labels" in text
    assert "row 4 repeats row 2" in text and "row 6 repeats row 3" in text  # ./0.png is 0.png
    assert "duplicates='drop'" in text and "duplicates='keep'" in text

    with pytest.warns(ReaderWarning, match=r"(?s)2 of 5 samples skipped.*row 4: repeats row 2"):
        ds = read_manifest(manifest, tasks=["species"], duplicates="drop")
    assert [Path(p).name for p in ds.paths] == ["0.png", "1.png", "2.png"] and len(ds.skipped) == 2
    assert len(read_manifest(manifest, tasks=["species"], duplicates="keep")) == 5
    with pytest.raises(ValueError, match="duplicates must be one of 'error', 'drop', 'keep', got 'dorp'"):
        read_manifest(manifest, tasks=["species"], duplicates="dorp")


def test_conflicting_labels_for_one_file_name_the_file_and_both_labels(tmp_path):
    manifest = pets(tmp_path, "0.png,cat\n1.png,dog\n0.png,dog\n2.png,\n2.png,cat\n")
    for duplicates in ("error", "drop", "keep"):  # never a choice: one of the labels is wrong
        with pytest.raises(ValueError) as info:
            read_manifest(manifest, tasks=["species"], duplicates=duplicates)
        text = str(info.value)
        assert "pets.csv: 2 conflicting label(s) for the same file" in text
        assert f"{tmp_path}/0.png: row 2 has species='cat', row 4 has species='dog'" in text
        assert "row 5 has species=(empty), row 6 has species='cat'" in text


@pytest.mark.parametrize("cell", ["../../etc/passwd", "sub/../../outside.png", "/etc/passwd"])
def test_paths_outside_the_root_are_refused_unless_allowed(tmp_path, cell):
    data = tmp_path / "data"
    manifest = pets(data, f"0.png,cat\n{cell},dog\n")
    with pytest.raises(ValueError) as info:
        read_manifest(manifest, tasks=["species"])
    text = str(info.value)
    assert f"pets.csv: 1 path(s) lead outside the root folder {data}" in text
    assert "row 3: " in text and "allow_outside_root=True" in text
    # Opted out, the path is read (and here fails as a missing or undecodable image, named).
    with pytest.raises(ImageReadError):
        read_manifest(manifest, tasks=["species"], allow_outside_root=True, verify=True)


def test_paths_inside_the_root_with_dots_or_absolute_are_accepted(tmp_path):
    manifest = pets(tmp_path, f"sub/../0.png,cat\n{tmp_path / '1.png'},dog\n2.png,cat\n")
    assert len(read_manifest(manifest, tasks=["species"])) == 3


def test_detection_manifests_are_confined_to_the_root_too(tmp_path):
    save_image(tmp_path / "a.png")
    manifest = write(tmp_path / "boxes.json", json.dumps([{"path": "../a.png", "boxes": [], "label": "x"}]))
    with pytest.raises(ValueError, match=r"(?s)boxes.json: 1 path\(s\) lead outside the root folder.*entry 0"):
        read_detection(manifest, tasks={})


def test_a_manifest_in_another_encoding_names_file_line_byte_and_the_fix(tmp_path):
    for k in range(2):
        save_image(tmp_path / f"{k}.png", seed=k)
    manifest = tmp_path / "latin.csv"
    manifest.write_bytes("path,owner\n0.png,Zoe\n1.png,Ren\u00e9e\n".encode("latin-1"))
    with pytest.raises(ValueError) as info:
        read_manifest(manifest, tasks=["owner"])
    text = str(info.value)
    # "Ren\xe9e": byte 0xe9 is the 4th character of line 3 (offset = 11 + 10 + 6 + 3).
    assert f"Manifest {manifest} is not valid utf-8-sig text: byte b'\\xe9' at offset 30 (line 3, column 10)" in text
    assert "encoding='latin-1'" in text
    ds = read_manifest(manifest, tasks=["owner"], encoding="latin-1")
    assert ds.vocabularies == {"owner": ["Ren\u00e9e", "Zoe"]}
    with pytest.raises(ValueError, match="encoding='latin1x' is not a text encoding"):
        read_manifest(manifest, tasks=["owner"], encoding="latin1x")


def test_a_json_manifest_in_another_encoding_is_named_too(tmp_path):
    manifest = tmp_path / "m.json"
    manifest.write_bytes('[{"path": "a.png", "owner": "Ren\u00e9e"}]'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"m.json is not valid utf-8-sig text: .*line 1.*encoding="):
        read_manifest(manifest, tasks=["owner"])
