"""`pipeline prepare`: the official ImageNet archives and Kaggle's copy to folders or shards, checked
against the hand-built folder; counts, MD5, odd images, resume after kill -9."""
import filecmp
import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main as cli_main
from pipeline.data import archives
from pipeline.data.types import DataError
from tests import imagenet_archives
from tests.helpers import REPO


@pytest.fixture(scope="module")
def built(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("archives")
    meta = imagenet_archives.build(demo_data, out)
    return out, meta


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)

    def equal(c) -> bool:
        if c.left_only or c.right_only or c.funny_files:
            return False
        _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)
        return not mismatch and not errors and all(equal(sub) for sub in c.subdirs.values())
    return equal(cmp)


def _prepare(*args: str) -> int:
    return cli_main(["prepare", *args, "--workers", "1"])


def test_devkit_ids_are_not_the_sorted_order(built):
    """The trap the prepare must avoid: label = ID - 1 would be wrong for most classes here."""
    out, meta = built
    by_sorted = {w: i for i, w in enumerate(sorted(meta["ids"]))}
    assert sum(meta["ids"][w] - 1 != by_sorted[w] for w in meta["ids"]) >= len(meta["ids"]) // 2
    id_to_wnid, words, counts, truth = archives.read_devkit(out / "official" / archives.DEVKIT)
    assert len(id_to_wnid) == 10  # the two internal synsets are not classes
    assert sorted(id_to_wnid.values()) == sorted(meta["ids"])
    assert len(truth) == 130 and counts == {w: 40 for w in meta["ids"]}


@pytest.mark.parametrize("layout", ["official", "kaggle"])
def test_prepare_folder_equals_the_hand_built_folder(built, layout, tmp_path, capsys):
    out, meta = built
    assert _prepare("imagenet", str(out / layout), "--out", str(tmp_path / "imagenet")) == 0
    for split in ("train", "val"):
        assert _same_tree(tmp_path / "imagenet" / split, out / "expected" / split), split
    lines = (tmp_path / "imagenet" / "classes.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == sorted(meta["ids"])
    assert lines[0] == f"{sorted(meta['ids'])[0]} 1000 thing, thingy"
    assert '"train": 400, "val": 130' in capsys.readouterr().out


def test_prepared_shards_give_the_folder_batches_in_both_backends(built, tmp_path):
    from tests.test_shards import assert_same_batches

    out, _ = built
    assert _prepare("imagenet", str(out / "official"), "--out", str(tmp_path / "s"), "--format", "shards",
                    "--shard-mb", "0.3") == 0
    train = sorted((tmp_path / "s" / "train").glob("*.tar"))
    assert len(train) >= 3 and all(t.with_suffix(".idx").is_file() for t in train)
    assert (tmp_path / "s" / "train" / "info.json").is_file() and (tmp_path / "s" / "val" / "info.json").is_file()
    # globally shuffled: the first shard holds most classes, not one or two
    with tarfile.open(train[0]) as tar:
        first = {int(tar.extractfile(m).read()) for m in tar if m.name.endswith(".cls")}
    assert len(first) >= 8
    assert_same_batches(out / "expected", tmp_path / "s")


def test_counts_that_differ_from_the_devkit_name_the_class(demo_data, tmp_path):
    meta = imagenet_archives.build(demo_data, tmp_path / "a", train_counts_off={"n00001007": 2})
    assert meta
    with pytest.raises(DataError, match=r"differ from the devkit's in 1 classes: n00001007 \(40 found, 42 expected\)"):
        archives.check_counts(archives.read_dataset(tmp_path / "a" / "official"))


def test_missing_archive_and_md5_mismatch_are_one_line_errors(built, tmp_path, capsys, monkeypatch):
    out, _ = built
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / archives.TRAIN_TAR).write_bytes((out / "official" / archives.TRAIN_TAR).read_bytes())
    assert _prepare("imagenet", str(partial), "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and archives.VAL_TAR in err[-1] and archives.DEVKIT in err[-1]
    assert not (tmp_path / "o").exists()
    assert _prepare("imagenet", str(out / "official"), "--out", str(tmp_path / "o"), "--md5") == 2
    assert "MD5" in capsys.readouterr().err and not (tmp_path / "o").exists()
    real = {name: hashlib.md5((out / "official" / name).read_bytes()).hexdigest() for name in archives.OFFICIAL_MD5}
    monkeypatch.setattr(archives, "OFFICIAL_MD5", real)
    assert _prepare("imagenet", str(out / "official"), "--out", str(tmp_path / "o"), "--md5") == 0


def _odd_images() -> dict[str, bytes]:
    yy, xx = np.mgrid[0:40, 0:48]
    pixels = np.stack([xx * 5, yy * 6, (xx + yy) * 3 % 256], axis=-1).astype(np.uint8)  # smooth, like a photo
    png, cmyk, gray = io.BytesIO(), io.BytesIO(), io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    Image.fromarray(pixels).convert("CMYK").save(cmyk, format="JPEG", quality=95)
    Image.fromarray(pixels[..., 0]).save(gray, format="JPEG", quality=95)
    return {"png": png.getvalue(), "cmyk": cmyk.getvalue(), "gray": gray.getvalue()}


def test_png_and_cmyk_files_come_out_as_rgb_jpegs_both_backends_decode_alike(tmp_path):
    from nvidia.dali import fn, pipeline_def, types

    from pipeline.data.writers import normalized_image

    odd = _odd_images()
    fixed_png, png_changed = normalized_image(odd["png"])
    fixed_cmyk, cmyk_changed = normalized_image(odd["cmyk"])
    same_gray, gray_changed = normalized_image(odd["gray"])
    assert png_changed and cmyk_changed and not gray_changed and same_gray == odd["gray"]
    for original, fixed in ((odd["png"], fixed_png), (odd["cmyk"], fixed_cmyk)):
        with Image.open(io.BytesIO(fixed)) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            pil = np.asarray(image.convert("RGB"), dtype=np.int16)
        reference = np.asarray(Image.open(io.BytesIO(original)).convert("RGB"), dtype=np.int16)
        assert np.abs(pil - reference).mean() < 3  # quality 95, full chroma: close to the source pixels

        @pipeline_def(batch_size=1, num_threads=1, device_id=None)
        def decode():
            data = fn.external_source(source=lambda: [np.frombuffer(fixed, np.uint8)], batch=True, dtype=types.UINT8)
            return fn.decoders.image(data, device="cpu", output_type=types.RGB)

        pipe = decode()
        pipe.build()
        dali = np.asarray(pipe.run()[0].at(0), dtype=np.int16)
        assert dali.shape == pil.shape and np.abs(dali - pil).max() <= 1  # the same RGB image


@pytest.mark.slow
def test_prepare_killed_with_sigkill_resumes_to_the_same_output(built, tmp_path):
    out, _ = built
    env = {**os.environ, "PIPELINE_FAULT_SLOW_PREPARE": "0.02", "OMP_NUM_THREADS": "1"}
    for fmt in ("shards", "folder"):
        args = [sys.executable, "-m", "pipeline", "prepare", "imagenet", str(out / "official"), "--format", fmt,
                "--workers", "2", "--shard-mb", "0.1"]
        subprocess.run([*args, "--out", str(tmp_path / f"whole-{fmt}")], check=True, capture_output=True,
                       cwd=REPO, env={**env, "PIPELINE_FAULT_SLOW_PREPARE": "0"})
        target = tmp_path / f"killed-{fmt}"
        proc = subprocess.Popen([*args, "--out", str(target)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(target.rglob("*.JPEG" if fmt == "folder" else "*.idx"))) < 2:
            time.sleep(0.05)
        time.sleep(0.3)  # mid-way through more outputs
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        partial = list(target.rglob("*.partial"))
        assert partial, f"{fmt}: the kill left no half-written file; the test did not interrupt a write"
        assert not (target / "train" / "info.json").exists() or fmt == "folder"
        done = subprocess.run([*args, "--out", str(target)], capture_output=True, text=True, cwd=REPO,
                              env={**env, "PIPELINE_FAULT_SLOW_PREPARE": "0"})
        assert done.returncode == 0, done.stderr
        assert "resuming: removed" in done.stderr and re.search(r"[1-9][\d,]* already done", done.stderr)
        assert _same_tree(target, tmp_path / f"whole-{fmt}"), fmt
