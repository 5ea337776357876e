"""training.data_root: which folder each set comes from, and the error when it is not there."""

from __future__ import annotations

from pathlib import Path

import pytest

import training.data_root as dr


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(dr.DATA_ENV, raising=False)
    monkeypatch.delenv(dr.FASHION_MNIST_ENV, raising=False)


def test_env_wins_even_when_the_folder_is_missing(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(dr.DATA_ENV, str(tmp_path / "nowhere"))
    assert dr.data_root() == tmp_path / "nowhere"
    assert dr.dataset_dir("mnist") == tmp_path / "nowhere" / "mnist"


def test_shared_data_beside_the_repository_then_the_local_folder(
    no_env, monkeypatch, tmp_path
) -> None:
    shared, local = tmp_path / "shared" / "data", tmp_path / "repo" / "data"
    monkeypatch.setattr(dr, "SHARED_DATA", shared)
    monkeypatch.setattr(dr, "LOCAL_DATA", local)
    assert dr.data_root() == local  # ../shared/data does not exist
    shared.mkdir(parents=True)
    assert dr.data_root() == shared
    assert dr.dataset_dir("cifar10") == shared / "cifar10"


def test_the_default_shared_folder_is_beside_the_repository() -> None:
    repo = Path(__file__).resolve().parents[2]
    assert repo.parent / "shared" / "data" == dr.SHARED_DATA
    assert repo / "data" == dr.LOCAL_DATA


def test_fashion_mnist_is_debian_unless_overridden(no_env, monkeypatch, tmp_path) -> None:
    assert dr.dataset_dir("fashion_mnist") == Path("/usr/share/datasets/fashion-mnist")
    monkeypatch.setenv(dr.DATA_ENV, str(tmp_path))  # the data root does not move it
    assert dr.dataset_dir("fashion_mnist") == Path("/usr/share/datasets/fashion-mnist")
    monkeypatch.setenv(dr.FASHION_MNIST_ENV, str(tmp_path / "fm"))
    assert dr.dataset_dir("fashion_mnist") == tmp_path / "fm"


def test_require_names_the_missing_files_and_the_command(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(dr.DATA_ENV, str(tmp_path))
    with pytest.raises(dr.DataMissingError) as caught:
        dr.require("notmnist")
    message = str(caught.value)
    assert str(tmp_path / "notmnist") in message
    assert "t10k-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "make data" in message and "python -m training.fetch_data" in message
    assert isinstance(caught.value, FileNotFoundError)
    (tmp_path / "notmnist").mkdir()
    (tmp_path / "notmnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(dr.DataMissingError, match=r"\(no t10k-labels-idx1-ubyte.gz\):"):
        dr.require("notmnist")
    (tmp_path / "notmnist" / "t10k-labels-idx1-ubyte").write_bytes(b"")  # not gzipped: fine
    assert dr.require("notmnist") == tmp_path / "notmnist"


def test_require_cifar10_accepts_the_archive_or_the_split_folder(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(dr.DATA_ENV, str(tmp_path))
    (tmp_path / "cifar10" / "test").mkdir(parents=True)
    assert dr.require("cifar10", ("test",)) == tmp_path / "cifar10"
    with pytest.raises(dr.DataMissingError, match="cifar10-jpg.tgz"):
        dr.require("cifar10", ("train",))
    (tmp_path / "cifar10" / "cifar10-jpg.tgz").write_bytes(b"")
    assert dr.require("cifar10", ("train", "test")) == tmp_path / "cifar10"


def test_require_fashion_mnist_says_how_to_install_it(no_env, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(dr.FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(dr.DataMissingError, match="dataset-fashion-mnist.*make setup"):
        dr.require("fashion_mnist", ("train",))


def test_unknown_sets_and_splits_are_value_errors() -> None:
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        dr.dataset_dir("imagenet")
    with pytest.raises(ValueError, match="no split"):
        dr.require("mnist", ("train",))  # only the MNIST test set is used
