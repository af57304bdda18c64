"""Data sources on small files written by the tests, and on the shared CIFAR-10 JPEG copy."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raypoison.core.registry import build_component
from raypoison.data import DATASETS, load_dataset
from raypoison.data.setups import load_setups, sample_setup, save_setups
from raypoison.errors import ConfigError, DataError

DATA_ROOT = os.environ.get("RAYPOISON_DATA_ROOT")
needs_shared = pytest.mark.skipif(not DATA_ROOT, reason="set RAYPOISON_DATA_ROOT to ../shared/data")


def source(name, **params):
    return load_dataset(build_component({"name": name, "params": params}, "dataset", DATASETS))


def test_cifar_batches_load_through_the_restricted_unpickler(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                 b"labels": [i % 10, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"plane"] * 10}))
    data = source("cifar10", root=str(tmp_path))
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (4, 3, 32, 32)
    assert data.train_y[:4].tolist() == [0, 1, 2, 3] and data.mean[0] == 0.4914

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(DataError, match="refused to load posix.system"):
        source("cifar10", root=str(tmp_path))


@pytest.mark.parametrize("batch, meta, message", [
    ({b"labels": [0, 1, 2]}, None, r"test_batch: b'labels' must hold one integer label per "
                                   r"image \(4\)"),
    ({b"labels": [0, 1, 2, 99]}, None, r"test_batch: labels must lie in \[0, 10\), found 0 to 99"),
    ({b"labels": [0, 1, -1, 3]}, None, r"test_batch: labels must lie in \[0, 10\), found -1"),
    ({b"data": np.zeros((4, 3000), np.uint8)}, None, r"test_batch: b'data' must be uint8 rows of "
                                                     r"3,072 bytes"),
    ({}, [b"plane"], r"batches.meta: expected a mapping with b'label_names'"),
])
def test_a_malformed_cifar_batch_is_refused_naming_the_file(tmp_path, batch, meta, message):
    """Labels out of range or fewer than the images loaded without complaint; a batch of the
    wrong width failed in a reshape that named no file."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        good = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps({**good, **batch} if name == "test_batch"
                                                 else good))
    (folder / "batches.meta").write_bytes(pickle.dumps(
        meta if meta is not None else {b"label_names": [b"plane"] * 10}))
    with pytest.raises(DataError, match=message):
        source("cifar10", root=str(tmp_path))


def test_cifar_folder_missing_says_what_is_expected(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        source("cifar10", root=str(tmp_path))
    with pytest.raises(ConfigError, match="dataset.params.root: not found"):
        source("cifar10", root=str(tmp_path / "absent"))


def _write_png(path: Path, array: np.ndarray, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _write_shuffled_folder(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of random 6x6 images in an ImageFolder layout, files numbered in the
    original within-class order, plus ``order.npy``: the labels in original order."""
    rng = np.random.default_rng(1)
    original_labels = np.array([2, 0, 1, 0, 2, 2, 1, 0])
    originals = rng.integers(0, 256, (8, 6, 6, 3), dtype=np.uint8)
    rank = {c: 0 for c in range(3)}
    for i, label in enumerate(original_labels):
        _write_png(root / "train" / f"c{label}" / f"{rank[label]:04d}.png", originals[i])
        rank[label] += 1
    for c in range(3):
        _write_png(root / "test" / f"c{c}" / "0000.png", originals[c])
    np.save(root / "order.npy", original_labels)
    return original_labels, originals


def test_imagefolder_restores_the_original_order(tmp_path):
    original_labels, originals = _write_shuffled_folder(tmp_path)
    plain = source("imagefolder", root=str(tmp_path))
    assert plain.train_y.tolist() == sorted(original_labels.tolist())  # class-major
    data = source("imagefolder", root=str(tmp_path), train_order=str(tmp_path / "order.npy"))
    assert data.classes == ("c0", "c1", "c2")
    assert data.train_y.tolist() == original_labels.tolist()
    assert torch.equal(data.train_x, torch.from_numpy(originals).permute(0, 3, 1, 2))
    np.save(tmp_path / "bad.npy", np.array([0, 0, 0, 0, 1, 1, 2, 2]))
    with pytest.raises(DataError, match="class counts"):
        source("imagefolder", root=str(tmp_path), train_order=str(tmp_path / "bad.npy"))


@pytest.mark.parametrize("content, message", [
    (b"2 0 1 0 2 2 1 0\n", "not a .npy array of class labels"),
    (np.array([2, 0, 1, 0, 2, 2, 1, 0]) + 0.5, "whole numbers"),
    (np.array([2, 0, 1, 0, 2, 2, 1, -1]), "must be ≥ 0, found -1"),
    (np.array([[2, 0, 1, 0], [2, 2, 1, 0]]), r"shape \(2, 4\)"),
    (np.array(["a", "b"]), "type <U1"),
])
def test_a_bad_order_file_is_refused_naming_it(tmp_path, content, message):
    """A text file gave a traceback with numpy's advice to load it with pickles allowed; float
    labels were cut and negative ones failed deep inside the reordering."""
    _write_shuffled_folder(tmp_path)
    bad = tmp_path / "bad.npy"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        np.save(bad, content)
    with pytest.raises(DataError, match=rf"bad.npy: .*{message}"):
        source("imagefolder", root=str(tmp_path), train_order=str(bad))
    with pytest.raises(DataError, match=rf"bad.npy: .*{message}"):
        source("imagefolder", root=str(tmp_path), test_order=str(bad))


def test_imagefolder_class_subset_is_relabelled_in_the_given_order(tmp_path):
    original_labels, originals = _write_shuffled_folder(tmp_path)
    data = source("imagefolder", root=str(tmp_path), train_order=str(tmp_path / "order.npy"),
                  classes=[2, 0])
    assert data.classes == ("c2", "c0")
    kept = np.flatnonzero(np.isin(original_labels, [2, 0]))  # original order, class 1 dropped
    assert data.train_y.tolist() == [0 if original_labels[i] == 2 else 1 for i in kept]
    assert torch.equal(data.train_x, torch.from_numpy(originals[kept]).permute(0, 3, 1, 2))
    assert data.test_y.tolist() == [1, 0]  # test files stay class-major: c0, then c2
    assert len(data.mean) == 3  # measured on the kept images
    with pytest.raises(DataError, match=r"classes \[3\] do not exist.*3 classes"):
        source("imagefolder", root=str(tmp_path), classes=[0, 3])
    with pytest.raises(ConfigError, match=r"dataset\.params\.classes"):
        source("imagefolder", root=str(tmp_path), classes=[1, 1])


def test_tinyimagenet_layout_sorting_grayscale_and_label_shift(tmp_path):
    wnids = [f"n{i:08d}" for i in range(102)]
    (tmp_path / "wnids.txt").write_text("\n".join(reversed(wnids)))  # order in the file is moot
    lines = []
    for i, w in enumerate(wnids):
        pixels = np.full((8, 8), i, dtype=np.uint8)
        _write_png(tmp_path / "train" / w / "images" / f"{w}_0.JPEG", pixels, "L")
        _write_png(tmp_path / "val" / "images" / f"val_{i}.JPEG", np.stack([pixels] * 3, -1))
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t8\t8")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(lines))
    everything = source("tinyimagenet", root=str(tmp_path))
    assert everything.train_x.shape == (102, 3, 8, 8) and everything.num_classes == 102
    assert everything.train_y.tolist() == list(range(102))
    last = source("tinyimagenet", root=str(tmp_path), classes="last100")
    assert last.num_classes == 2 and last.train_y.tolist() == [0, 1]
    assert last.classes == (wnids[100], wnids[101])
    assert int(last.train_x[1, 0, 0, 0]) == pytest.approx(101, abs=2)  # JPEG is lossy
    with pytest.raises(DataError, match="wnids.txt"):
        source("tinyimagenet", root=str(tmp_path / "train"))


def test_setups_round_trip_and_refuse_code(tmp_path):
    train = np.repeat(np.arange(4), 10)
    setups = [sample_setup(train, train, budget=3, seed=0, index=i) for i in range(5)]
    for name in ("s.json", "s.pickle"):
        save_setups(setups, tmp_path / name)
        assert load_setups(tmp_path / name) == setups

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "evil.pickle").write_bytes(pickle.dumps([Exploit()]))
    with pytest.raises(DataError, match="refused"):
        load_setups(tmp_path / "evil.pickle")


def _setup_entry(target_class=1, target_index=7, base_class=2, bases=(3, 4, 5)):
    index = target_index if isinstance(target_index, float) else np.int64(target_index)
    return {"target class": target_class, "target index": index,
            "base class": base_class, "base indices": np.asarray(bases)}


@pytest.mark.parametrize("entry, message", [
    (_setup_entry(base_class=1), r"\[1\]: the base class is the target class \(1\)"),
    (_setup_entry(bases=[3.0, 4.7, 5.0]), r"\[1\]: base index 1 must be a whole number ≥ 0, "
                                          r"found 4.7"),
    (_setup_entry(bases=[3, -4, 5]), r"\[1\]: base index 1 must be a whole number ≥ 0, found -4"),
    (_setup_entry(target_index=2.5), r"\[1\]: the target index must be a whole number"),
    (_setup_entry(target_class="x"), r"\[1\]: the target class must be a whole number, found "
                                     r"'x'"),
])
def test_a_setups_entry_that_cannot_mean_what_a_trial_assumes_is_refused(tmp_path, entry,
                                                                         message):
    """A base class equal to the target class made a correct prediction count as attack success,
    and float indices were cut (4.7 read as 4) with the rows marked ok."""
    good = _setup_entry()
    (tmp_path / "s.pickle").write_bytes(pickle.dumps([good, entry], protocol=4))
    with pytest.raises(DataError, match=rf"s.pickle{message}"):
        load_setups(tmp_path / "s.pickle")
    plain = {k.replace(" ", "_"): (v.tolist() if isinstance(v, np.ndarray) else
                                   int(v) if isinstance(v, np.integer) else v)
             for k, v in entry.items()}
    json_good = {k.replace(" ", "_"): (v.tolist() if isinstance(v, np.ndarray) else int(v))
                 for k, v in good.items()}
    (tmp_path / "s.json").write_text(json.dumps([json_good, plain]))
    with pytest.raises(DataError, match=rf"s.json{message}"):
        load_setups(tmp_path / "s.json")


def test_a_base_listed_twice_is_kept_as_the_reference_file_lists_it(tmp_path):
    """The reference CIFAR-10 transfer file lists one base twice (entry 78, image 5259); its code
    crafts and trains on a poison for each listing, so the entry is read as written."""
    (tmp_path / "s.pickle").write_bytes(pickle.dumps([_setup_entry(bases=[3, 5, 5])], protocol=4))
    (setup,) = load_setups(tmp_path / "s.pickle")
    assert setup.base_indices == (3, 5, 5) and setup.target_index == 7


@pytest.fixture(scope="module")
def cifar10_jpeg():
    root = Path(DATA_ROOT) / "cifar10-jpeg"
    return source("imagefolder", root=str(root / "cifar10-jpg-q75.tar.gz"),
                  train_order=str(root / "train_labels_original_order.npy"),
                  test_order=str(root / "test_labels_first512.npy"))


@pytest.mark.slow
@needs_shared
def test_reference_setups_point_at_their_base_class_in_the_jpeg_copy(cifar10_jpeg):
    root = Path(DATA_ROOT)
    labels = cifar10_jpeg.train_y.numpy()
    assert (labels == np.load(root / "cifar10-jpeg" / "train_labels_original_order.npy")).all()
    test_labels = cifar10_jpeg.test_y.numpy()
    assert (test_labels[:512] == np.load(root / "cifar10-jpeg" / "test_labels_first512.npy")).all()
    for name, budget in (("cifar10_transfer_learning", 25), ("cifar10_from_scratch", 500)):
        setups = load_setups(root / "reference-setups" / f"{name}.pickle")
        assert len(setups) == 100
        for s in setups:
            assert len(s.base_indices) == budget and s.target_class != s.base_class
            assert (labels[list(s.base_indices)] == s.base_class).all(), (name, s)
            if s.target_index < 512:
                assert test_labels[s.target_index] == s.target_class


@pytest.mark.slow
@needs_shared
def test_restored_images_are_the_files_the_order_names(cifar10_jpeg):
    import tarfile

    from raypoison.data.files import decode

    labels = cifar10_jpeg.train_y.numpy()
    archive = Path(DATA_ROOT) / "cifar10-jpeg" / "cifar10-jpg-q75.tar.gz"
    with tarfile.open(archive) as tar:
        for i in (0, 1, 4999, 30330, 49999):
            rank = int((labels[:i] == labels[i]).sum())
            name = f"train/{cifar10_jpeg.classes[labels[i]]}/{rank:04d}.jpg"
            expected = decode(tar.extractfile(name).read(), name)
            assert torch.equal(cifar10_jpeg.train_x[i], torch.from_numpy(expected).permute(2, 0, 1))


def test_a_corrupt_image_is_named_with_its_class_folder(tmp_path):
    _write_shuffled_folder(tmp_path)
    (tmp_path / "train" / "c1" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"train/c1/0001.png"):
        source("imagefolder", root=str(tmp_path))


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_a_damaged_archive_is_refused_though_every_image_in_it_decodes(tmp_path, compression):
    """tarfile stops at the archive's end marker, before the compressed stream's own check:
    a gzip archive whose stream no longer matches its checksum read without an error (a bit
    flipped inside a JPEG of the real CIFAR-10 archive decoded as a damaged image). The check
    at the end of the stream now runs (gz; bzip2 and xz find this damage while the members are
    read, where xz's raised a bare LZMAError); damage and truncation are one error naming the
    archive, and a file that is no archive says so."""
    import tarfile

    _write_shuffled_folder(tmp_path / "folder")
    archive = tmp_path / f"data.tar.{compression}"
    with tarfile.open(archive, f"w:{compression}") as tar:
        for sub in ("train", "test"):
            tar.add(tmp_path / "folder" / sub, arcname=sub)
    good = source("imagefolder", root=str(archive))
    assert len(good.train_y) == 8 and len(good.test_y) == 3
    data = bytearray(archive.read_bytes())
    stored_check = {"gz": -8, "bz2": -2, "xz": -16}[compression]  # inside each format's trailer
    data[stored_check] ^= 0x01
    (tmp_path / f"damaged.tar.{compression}").write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"damaged.tar.{compression}: the archive is damaged "
                                        r"or truncated"):
        source("imagefolder", root=str(tmp_path / f"damaged.tar.{compression}"))
    (tmp_path / f"cut.tar.{compression}").write_bytes(archive.read_bytes()[:len(data) // 2])
    with pytest.raises(DataError, match=rf"cut.tar.{compression}: the archive is damaged or "
                                        r"truncated"):
        source("imagefolder", root=str(tmp_path / f"cut.tar.{compression}"))
    (tmp_path / "notes.tar").write_bytes(b"not an archive at all" * 40)
    with pytest.raises(DataError, match=r"notes.tar: neither a folder nor a readable tar"):
        source("imagefolder", root=str(tmp_path / "notes.tar"))


def test_a_class_without_test_images_and_an_order_header_that_lies_are_refused(tmp_path):
    """A class with training images and no test folder loaded, and the trials that drew it as
    their target class failed with numpy's "a cannot be empty", naming nothing; an order file
    whose 128-byte header claims 10**12 labels raised MemoryError."""
    import shutil

    _write_shuffled_folder(tmp_path)
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.int64))
    header["shape"] = (10**12,)
    with (tmp_path / "lies.npy").open("wb") as out:
        np.lib.format.write_array_header_1_0(out, header)
        out.write(b"\0" * 8)
    with pytest.raises(DataError, match=r"lies.npy: not a .npy array of class labels"):
        source("imagefolder", root=str(tmp_path), train_order=str(tmp_path / "lies.npy"))
    shutil.rmtree(tmp_path / "test" / "c1")
    with pytest.raises(DataError, match=r"training classes \['c1'\] have no test folder"):
        source("imagefolder", root=str(tmp_path))
    kept = source("imagefolder", root=str(tmp_path), classes=[0, 2])  # c1 is not used
    assert kept.classes == ("c0", "c2") and len(kept.test_y) == 2


def _as_python2_pickles_it(batch: dict) -> bytes:
    """A CIFAR batch as Python 2's cPickle wrote the real files (protocol 2, byte strings as
    ``str``, each array through numpy's ``_reconstruct`` and a state of raw bytes): Python 3's
    own pickles of arrays take another path, so they would not test the one real files take."""
    import struct

    def text(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def num(i: int) -> bytes:
        return b"J" + struct.pack("<i", i)

    def array(a: np.ndarray) -> bytes:
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + num(0) + b"\x85"
                + text(b"b") + b"\x87R(" + num(1) + b"(" + b"".join(num(d) for d in a.shape)
                + b"tcnumpy\ndtype\n" + text(b"u1") + num(0) + num(1) + b"\x87R(" + num(3)
                + text(b"|") + b"NNN" + num(-1) + num(-1) + num(0) + b"tb\x89"
                + text(a.tobytes()) + b"tb")

    return (b"\x80\x02}(" + text(b"data") + array(batch[b"data"]) + text(b"labels") + b"](" +
            b"".join(num(v) for v in batch[b"labels"]) + b"eu.")


def test_cifar_batches_as_python_2_wrote_them_load_through_the_restricted_unpickler(tmp_path):
    """The bounds on arrays wrap numpy's ``_reconstruct`` and array states: the real CIFAR files
    (Python 2 pickles) must still load, byte for byte."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batches[name] = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         b"labels": [i % 10, 1, 2, 3]}
        blob = _as_python2_pickles_it(batches[name])
        assert pickle.loads(blob, encoding="bytes")[b"labels"] == batches[name][b"labels"]
        (folder / name).write_bytes(blob)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"plane"] * 10}))
    data = source("cifar10", root=str(tmp_path))
    expected = torch.from_numpy(batches["test_batch"][b"data"].reshape(4, 3, 32, 32))
    assert torch.equal(data.test_x, expected) and data.train_x.shape == (20, 3, 32, 32)
