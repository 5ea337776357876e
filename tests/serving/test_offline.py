"""Offline scoring (``trustgc score``): bad files become rows, answers follow the served schema.

The identity with the served answers is checked on a real TorchServe in test_multi_model.py;
here a tiny calibrated artifact is scored without any server.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from serving.decode import DecodeLimits, decode_image
from serving.offline import CSV_COLUMNS, collect_files, score_files
from serving.pictures import file_pixels, picture_paths
from serving.schema import ClassificationResponse, ErrorResponse
from training.calibrate import dataset_statistics
from training.data import make_synthetic
from trustgc.artifact import ModelManifest, build_model, load_model, save_model
from trustgc.config import load_model_config
from trustgc.plots import EXPLANATION_PIXELS
from trustgc.trust.calibration import fit_calibration, save_calibration
from trustgc.trust.predictor import Predictor
from trustgc_cli.main import main


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("offline") / "tiny"
    torch.manual_seed(0)
    config = load_model_config("tiny")
    manifest = ModelManifest(name="tiny", config=config, class_names=tuple("abcd"))
    save_model(directory, build_model(config), manifest)
    model, _ = load_model(directory)
    statistics = dataset_statistics(model, make_synthetic(40, seed=3).images)
    part_a = {name: values[:40] for name, values in statistics.items()}
    part_b = {name: values[40:] for name, values in statistics.items()}
    save_calibration(directory, fit_calibration(part_a, part_b, 0.05, 0.05))
    torch.set_num_threads(threads)
    return directory


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    data = make_synthetic(num_per_class=2, seed=5)
    for i, pixels in enumerate(data.images):
        Image.fromarray(pixels[..., 0]).save(folder / ("sub" if i % 2 else ".") / f"{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image: skipped inside a directory")
    return folder


def test_every_file_gets_a_row_and_bad_files_are_error_rows(artifact, images, tmp_path) -> None:
    missing = tmp_path / "missing.png"
    files = collect_files([images, missing])
    assert len(files) == 8 + 2 + 1 and files[-1] == missing  # notes.txt skipped
    out = tmp_path / "scores.jsonl"
    assert score_files([images, missing], artifact, out, progress=False) == {
        "rows": 11,
        "errors": 3,
    }
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["file"] for row in rows] == [str(path) for path in files]
    errors = {Path(row["file"]).name: row["error"]["code"] for row in rows if "error" in row}
    assert errors == {
        "broken.png": "undecodable_image",
        "empty.jpg": "empty_body",
        "missing.png": "missing_image",
    }
    for row in rows:
        body = {key: value for key, value in row.items() if key != "file"}
        kind = ErrorResponse if "error" in row else ClassificationResponse
        kind.model_validate(body)  # exactly the served schema
    answers = [row for row in rows if "error" not in row]
    assert {row["model"]["name"] for row in answers} == {"tiny"}
    assert all(len(row["probabilities"]) == 4 for row in answers)


def test_batches_give_the_same_decisions_and_csv_has_the_same_rows(
    artifact, images, tmp_path
) -> None:
    one = tmp_path / "one.jsonl"
    many = tmp_path / "many.csv"
    score_files([images], artifact, one, progress=False)
    score_files([images], artifact, many, batch_size=5, progress=False)
    rows = [json.loads(line) for line in one.read_text().splitlines()]
    with many.open() as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == list(CSV_COLUMNS)
    assert [r["file"] for r in table] == [r["file"] for r in rows]
    for row, line in zip(rows, table, strict=True):
        if "error" in row:
            assert line["error_code"] == row["error"]["code"] and not line["decision"]
            continue
        assert line["decision"] == row["decision"]
        assert line["label"] == row["prediction"]["label"]
        np.testing.assert_allclose(float(line["probability"]), row["prediction"]["probability"])
        np.testing.assert_allclose(float(line["ood_p_value"]), row["typicality"]["p_value"])


def test_cli(artifact, images, tmp_path, capsys) -> None:
    out = tmp_path / "cli.jsonl"
    argv = ["score", str(images), "--model", str(artifact), "--out", str(out)]
    assert main([*argv, "--no-progress", "--name", "shapes", "--top-k", "2"]) == 0
    assert "10 rows, 2 errors" in capsys.readouterr().out
    answer = next(json.loads(line) for line in out.open() if '"error"' not in line)
    assert answer["model"]["name"] == "shapes" and len(answer["probabilities"]) == 2
    assert main(["score", str(images), "--model", str(artifact), "--out", "x.txt"]) == 2
    assert ".jsonl or .csv" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "none"), "--model", str(artifact), "--out", str(out)]) == 0


def test_certify_adds_a_certificate_per_scored_image(artifact, images, tmp_path, capsys) -> None:
    """``--certify N``: every decoded image's row gets the smoothed label and radius, error rows
    none; the certificate equals Predictor.certify on the same pixels (same seed)."""
    out = tmp_path / "certified.jsonl"
    argv = ["score", str(images), "--model", str(artifact), "--out", str(out), "--no-progress"]
    assert main([*argv, "--certify", "200", "--sigma", "0.1"]) == 0
    rows = [json.loads(line) for line in out.open()]
    scored = [row for row in rows if "error" not in row]
    assert len(scored) == 8 and all("certificate" not in r for r in rows if "error" in r)
    predictor = Predictor.from_artifact(artifact)
    for row in scored:
        certificate = row["certificate"]
        assert certificate["method"] == "randomized_smoothing"
        assert certificate["n"] == 200 and certificate["sigma"] == 0.1
        pixels = decode_image(Path(row["file"]).read_bytes(), 8, 8, 1, DecodeLimits())
        (expected,) = predictor.certify(pixels[None], sigma=0.1, n=200)
        assert certificate["radius"] == pytest.approx(expected.radius)
        assert certificate["p_lower"] == pytest.approx(expected.p_lower)
        if certificate["label"] is None:
            assert certificate["radius"] == 0.0 and expected.abstained
        else:
            assert certificate["label"] == "abcd"[expected.predicted_index]
            assert certificate["agrees_with_prediction"] == (
                certificate["label"] == row["prediction"]["label"]
            )
    csv_out = tmp_path / "certified.csv"
    assert (
        main(
            [
                "score",
                str(images),
                "--model",
                str(artifact),
                "--out",
                str(csv_out),
                "--no-progress",
                "--certify",
                "50",
            ]
        )
        == 0
    )
    table = list(csv.DictReader(csv_out.open()))
    assert sum(bool(line["certified_radius"]) for line in table) == 8
    assert main([*argv, "--certify", "0"]) == 0  # 0: off
    assert main([*argv, "--certify", "10", "--sigma", "-1"]) == 2
    assert "--sigma > 0" in capsys.readouterr().err


# ------------------------------------------------------------------------ explanation pictures


@pytest.fixture
def class_folders(tmp_path) -> Path:
    """Two class folders reusing file names, a JPEG beside a PNG of the same stem, a bad file."""
    folder = tmp_path / "classes"
    data = make_synthetic(num_per_class=2, seed=7)
    for name, index in (("a/1.png", 0), ("b/1.png", 3), ("b/2.png", 5)):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.images[index][..., 0]).save(folder / name)
    Image.fromarray(data.images[6][..., 0]).save(folder / "b" / "1.jpg", quality=95)
    (folder / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    return folder


def _picture(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == EXPLANATION_PIXELS
        return np.asarray(image.convert("RGB"))


def test_picture_paths_are_distinct_and_mirror_the_folders(class_folders, tmp_path) -> None:
    files = collect_files([class_folders])
    out = tmp_path / "pictures"
    paths = picture_paths(files, out)
    assert [p.relative_to(out).as_posix() for p in paths] == [
        "a/1.png",
        "b/1.jpg.png",
        "b/1.png",
        "b/2.png",
        "b/broken.png",
    ]
    twice = picture_paths([files[0], files[0], class_folders / "x"], out)
    assert [p.relative_to(out).as_posix() for p in twice] == ["a/1.png", "a/1-2.png", "x.png"]


def test_score_explain_writes_one_picture_per_scored_image(
    artifact, class_folders, tmp_path, capsys
) -> None:
    out = tmp_path / "scored"
    argv = ["score", str(class_folders), "--model", str(artifact), "--out", str(out)]
    assert main([*argv, "--explain", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'results.jsonl'}: 5 rows, 1 errors" in printed
    assert f"wrote 4 pictures to {out}" in printed
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    files = collect_files([class_folders])
    expected = dict(zip(map(str, files), picture_paths(files, out), strict=True))
    pictures = {}
    for row in rows:
        picture = expected[row["file"]]
        if "error" in row:  # a bad file: its error row and no picture
            assert row["error"]["code"] == "undecodable_image" and not picture.exists()
            continue
        heatmaps = row["explanation"]["posterior_heatmaps"]
        assert [m["index"] for m in heatmaps] == [p["index"] for p in row["probabilities"]]
        pictures[row["file"]] = _picture(picture)
    assert sorted(p for p in out.rglob("*.png")) == sorted(
        expected[f] for f in pictures
    )  # nothing else written
    drawn = list(pictures.values())
    assert all(len(np.unique(p.reshape(-1, 3), axis=0)) > 50 for p in drawn)  # not blank
    assert not np.array_equal(drawn[0], drawn[1])  # the picture follows the image


def test_score_explain_beside_a_results_file(artifact, class_folders, tmp_path) -> None:
    out = tmp_path / "run" / "scores.csv"
    counts = score_files([class_folders], artifact, out, progress=False, explain=True)
    assert counts == {"rows": 5, "errors": 1, "pictures": 4}
    assert out.is_file() and len(list((tmp_path / "run" / "scores").rglob("*.png"))) == 4


def test_classify_explain_out_draws_the_served_answers(
    artifact, class_folders, tmp_path, monkeypatch, capsys
) -> None:
    """classify's picture path with the answers a server would give (the offline scorer's):
    one picture per answered file, none for the refused or missing ones, an error line each."""
    import serving.client
    from serving.offline import OfflineScorer
    from serving.schema import ErrorResponse as Error

    scorer = OfflineScorer.from_artifact(artifact, top_k=3)

    class ScorerClient:
        def __init__(self, **_: object) -> None:
            pass

        def classify(self, image: bytes, explain: bool, top_k: int, use_grpc: bool, **_: object):
            path = tmp_path / "sent.bin"
            path.write_bytes(image)
            row = next(scorer.score([path], explain=explain))
            body = {k: v for k, v in row.items() if k != "file"}
            return (Error if "error" in row else ClassificationResponse).model_validate(body)

    monkeypatch.setattr(serving.client, "ClassifierClient", ScorerClient)
    out = tmp_path / "classified"
    missing = tmp_path / "missing.png"
    argv = ["classify", str(class_folders), str(missing), "--token", "t"]
    assert main([*argv, "--explain", "--out", str(out)]) == 1  # a bad and a missing file
    captured = capsys.readouterr()
    assert "wrote 4 pictures to" in captured.out
    assert "broken.png" in captured.out and "missing.png" in captured.err
    files = collect_files([class_folders, missing])
    written = sorted(out.rglob("*.png"))
    assert len(written) == 4
    assert all(_picture(path) is not None for path in written)
    assert not any(p.name.startswith(("broken", "missing")) for p in written)
    assert len(files) == 6
    assert main([*argv, "--out", str(out)]) == 2
    assert "add --explain" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["classify", str(empty), "--token", "t"]) == 2  # a directory without images
    assert f"no image files in {empty}" in capsys.readouterr().err


def test_classify_pictures_show_the_file_padded_like_the_served_decoding() -> None:
    """A 60 x 40 file is drawn as a 60 x 60 square, centred between black bands of 10 rows."""
    white = Image.new("L", (60, 40), 255)
    buffer = io.BytesIO()
    white.save(buffer, format="PNG")
    shown = file_pixels(buffer.getvalue())
    assert shown.shape == (60, 60)
    assert np.all(shown[10:50] == 1.0) and np.all(shown[:10] == 0.0) and np.all(shown[50:] == 0.0)
