"""Bad input through the loaders and the command line: every case ends in one line naming
the file or option and the fix (exit code 2, no traceback, no run directory), or in a
documented fallback with a one-line warning."""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from conftest import TINY_OVERRIDES
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from activeseg.cli import main
from activeseg.config import save_yaml, to_dict
from activeseg.data.images import read_image, read_mask
from activeseg.data.patches import Normalizer, tile
from activeseg.data.phantom import make_phantom
from activeseg.data.sources import Sample, load_source
from activeseg.errors import UserError
from activeseg.files import read_records
from activeseg.presets import preset

TINY_SETS = [arg for key, value in TINY_OVERRIDES.items() for arg in ("--set", f"{key}={value}")]
SIDE = 128  # 4 patches of 64 px per image (demo preset)


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path)
    return path


def folder_dataset(root: Path, n: int = 6) -> Path:
    """``root/images/p<i>.png`` (8-bit gray) with ``root/masks/p<i>.png`` (0/255): phantom
    images of 128 px, enough patches for the tiny config's split."""
    for i, sample in enumerate(make_phantom(n_images=n, size=SIDE, seed=1, hard_fraction=0.0)):
        _save(root / "images" / f"p{i}.png", (sample.image * 255).astype(np.uint8))
        _save(root / "masks" / f"p{i}.png", sample.mask * 255)
    return root


def bids_dataset(root: Path, pixel_size: object) -> Path:
    """One subject, one sample, a dataset-level sidecar with ``PixelSize`` ``pixel_size``."""
    sample = make_phantom(n_images=1, size=SIDE, seed=1)[0]
    stem = "sub-a_sample-1_SEM"
    _save(root / f"sub-a/micr/{stem}.png", (sample.image * 255).astype(np.uint8))
    _save(root / f"derivatives/labels/sub-a/micr/{stem}_seg-myelin-manual.png", sample.mask * 255)
    (root / "SEM.json").write_text(json.dumps({"PixelSize": [pixel_size, pixel_size]}))
    return root


def cli(data: Path | str, out: Path, *extra: str) -> int:
    args = ["simulate", "--preset", "demo", "--data", str(data), "--out", str(out), "--quiet"]
    return main([*args, *TINY_SETS, *extra])


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("activeseg: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --- broken data sets: (how to break a valid folder, extra CLI options, message) ----------


def _truncate(root: Path) -> None:
    path = root / "images" / "p2.png"
    path.write_bytes(path.read_bytes()[:300])


def _garbage(root: Path) -> None:
    (root / "images" / "p2.png").write_bytes(b"this is not a PNG file at all")


def _drop_mask(root: Path) -> None:
    (root / "masks" / "p3.png").unlink()


def _orphan_mask(root: Path) -> None:
    _save(root / "masks" / "stray.png", np.zeros((SIDE, SIDE), np.uint8))


def _mismatch(root: Path) -> None:
    _save(root / "masks" / "p1.png", np.zeros((SIDE, SIDE - 4), np.uint8))


def _too_small(root: Path) -> None:
    for path in [*root.glob("images/*.png"), *root.glob("masks/*.png")]:
        _save(path, np.asarray(Image.open(path))[:40, :40].copy())


def _multi_page(root: Path) -> None:
    (root / "images" / "p2.png").unlink()
    stack = np.zeros((3, SIDE, SIDE), np.uint8)
    with tifffile.TiffWriter(root / "images" / "p2.tif") as tif:
        for plane in stack:
            tif.write(plane)


BROKEN: list[tuple[str, Callable[[Path], None], list[str], str]] = [
    ("truncated image", _truncate, [], r"cannot read image .*p2\.png.*truncated"),
    ("unreadable image", _garbage, [], r"cannot read image .*p2\.png"),
    ("image without mask", _drop_mask, [], r"images without a mask: p3\.png"),
    ("mask without image", _orphan_mask, [], r"masks without an image: stray\.png"),
    ("size mismatch", _mismatch, [], r"p1\.png is 128×128 pixels but its mask .*124×128"),
    ("multi-page TIFF", _multi_page, [], r"p2\.tif holds 3 pages"),
    ("images smaller than a patch", _too_small, [], r"no image is as large as one patch of 64"),
    ("pixel size 0", lambda r: None, ["--pixel-size", "0"], r"--pixel-size\) must be a positive"),
    ("negative pixel size", lambda r: None, ["--pixel-size=-1"], r"--pixel-size\) must be a pos"),
    ("pool smaller than k", lambda r: None, ["-k", "5"], r"need 10 pool patches but data.n_pool"),
    (
        "whole pool smaller than iterations x k",
        lambda r: None,
        ["-k", "8", "--set", "data.n_pool=none"],
        r"the pool holds 14 patches but 2 iterations x k=8 need 16; lower --iterations or -k",
    ),
    ("k = 0", lambda r: None, ["-k", "0"], r"loop.query_size \(k\) must be >= 1"),
    (
        "unknown strategy",
        lambda r: None,
        ["--set", "loop.strategies=bold"],
        "unknown strategy .bold.",
    ),
    ("unknown preset", lambda r: None, ["--preset", "fast"], "unknown preset 'fast'"),
    (
        "flag and --set",
        lambda r: None,
        ["--iterations", "2", "--set", "loop.iterations=3"],
        "loop.iterations given both as a flag and with --set",
    ),
    ("zero target pixel size", lambda r: None, ["--set", "data.pixel_size=0"], "data.pixel_size"),
    ("no test set", lambda r: None, ["--set", "data.n_test=0"], "data.n_test must be >= 1"),
    (
        "absurd learning rate",
        lambda r: None,
        ["--set", "train.lr=-1"],
        "train.lr must be a positive",
    ),
]


@pytest.mark.parametrize(
    ("breaking", "extra", "message"),
    [case[1:] for case in BROKEN],
    ids=[case[0] for case in BROKEN],
)
def test_broken_input_exits_2_with_one_line_and_leaves_no_run(
    breaking: Callable[[Path], None],
    extra: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = folder_dataset(tmp_path / "data")
    breaking(data)
    out = tmp_path / "run"
    assert cli(data, out, *extra) == 2
    line = one_line_error(capsys.readouterr().err)
    assert re.search(message, line), line
    assert not out.exists()


LOADER_ERRORS = BROKEN[:7]


@pytest.mark.parametrize(
    ("breaking", "message"),
    [(case[1], case[3]) for case in LOADER_ERRORS],
    ids=[case[0] for case in LOADER_ERRORS],
)
def test_the_loader_raises_the_same_user_error(
    breaking: Callable[[Path], None], message: str, tmp_path: Path
) -> None:
    data = folder_dataset(tmp_path / "data")
    breaking(data)
    if breaking is _too_small:
        with pytest.raises(UserError, match=message):
            tile(load_source(str(data)), 64)
    else:
        with pytest.raises(UserError, match=message):
            load_source(str(data))


@pytest.mark.parametrize("value", [0, -0.1, "abc", None])
def test_an_invalid_bids_pixel_size_names_the_sidecar(
    value: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bids_dataset(tmp_path / "bids", value)
    assert cli(data, tmp_path / "run") == 2
    line = one_line_error(capsys.readouterr().err)
    assert "SEM.json" in line and "pixel size must be a positive number" in line


def test_a_pixel_size_for_a_bids_dataset_is_a_conflict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bids_dataset(tmp_path / "bids", 0.1)
    assert cli(data, tmp_path / "run", "--pixel-size", "0.1") == 2
    assert "BIDS dataset: pixel sizes come from its JSON sidecars" in one_line_error(
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("args", "option"),
    [(["--pixel-size", "abc"], "--pixel-size"), (["-k", "two"], "-k"), (["--bogus"], "--bogus")],
)
def test_usage_errors_return_2_from_main(
    args: list[str], option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("activeseg")
    assert ": error: " in err.strip().splitlines()[-1]
    assert option in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["simulate", "--help"]])
def test_help_and_version_return_0(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 0
    assert "activeseg" in capsys.readouterr().out


# --- run directories that are not this run's ---------------------------------------------


def _write_config(out: Path, data: dict[str, object]) -> None:
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(data))


def _older_schema(out: Path) -> None:
    _write_config(out, {**to_dict(preset("demo")), "schema": 0})


def _other_settings(out: Path) -> None:
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(save_yaml(preset("cpu")))


def _not_a_config(out: Path) -> None:
    out.mkdir(parents=True)
    (out / "config.yaml").write_text("- just\n- a list\n")


def _foreign_folder(out: Path) -> None:
    out.mkdir(parents=True)
    (out / "thesis.docx").write_text("precious")


def _out_is_a_file(out: Path) -> None:
    out.write_text("a file")


FOREIGN: list[tuple[str, Callable[[Path], None], str]] = [
    ("older config schema", _older_schema, "config schema 0 is not 1; .*start a new run"),
    ("other settings", _other_settings, r"written with other settings \(.*warmup_steps: 10 -> 0"),
    ("not a config", _not_a_config, "is not a config mapping"),
    ("foreign folder", _foreign_folder, "holds no activeseg run .* choose a new or empty --out"),
    ("--out is a file", _out_is_a_file, "cannot create the run directory"),
]


@pytest.mark.parametrize(("make", "message"), [c[1:] for c in FOREIGN], ids=[c[0] for c in FOREIGN])
def test_a_foreign_or_older_run_directory_is_refused_and_kept(
    make: Callable[[Path], None],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    make(out)
    files = [out] if out.is_file() else list(out.iterdir())
    before = {p: p.read_bytes() for p in files}
    assert cli("synthetic", out, "--resume") == 2
    assert re.search(message, one_line_error(capsys.readouterr().err))
    assert {p: p.read_bytes() for p in files} == before


def test_records_of_another_schema_are_refused_on_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert cli("synthetic", out, "--set", "loop.iterations=0") == 0
    path = out / "records-random-rep0.jsonl"
    rows = read_records(path)
    path.write_text(json.dumps({**rows[0], "schema": 0}) + "\n")
    capsys.readouterr()
    assert cli("synthetic", out, "--set", "loop.iterations=0", "--resume") == 2
    assert "record schema 0 unsupported" in one_line_error(capsys.readouterr().err)


# --- accepted with a warning or read as documented ---------------------------------------


def odd_formats(root: Path) -> list[np.ndarray]:
    """A folder data set whose images are RGB and RGBA PNG, 16-bit and float TIFF and 8-bit
    gray, with an empty, an all-foreground and a 0/127/255 label mask among the masks;
    returns the 8-bit gray images ``[H, W]`` they all encode."""
    folder_dataset(root)
    gray = [np.asarray(Image.open(root / "images" / f"p{i}.png")) for i in range(6)]
    _save(root / "images" / "p0.png", np.stack([gray[0]] * 3, -1))  # RGB
    _save(root / "images" / "p1.png", np.stack([gray[1]] * 3 + [np.full_like(gray[1], 9)], -1))
    (root / "images" / "p2.png").unlink()
    _save(root / "images" / "p2.tif", gray[2].astype(np.uint16) * 257)
    (root / "images" / "p3.png").unlink()
    _save(root / "images" / "p3.tif", gray[3].astype(np.float32) / 255)
    _save(root / "masks" / "p4.png", np.zeros((SIDE, SIDE), np.uint8))
    _save(root / "masks" / "p5.png", np.full((SIDE, SIDE), 255, np.uint8))
    labels = np.asarray(Image.open(root / "masks" / "p2.png")).copy()
    top = labels[: SIDE // 2]
    top[top == 255] = 127  # a second class: the top half's myelin becomes "127"
    _save(root / "masks" / "p2.png", labels)
    return gray


def test_odd_formats_load_with_warnings_for_suspicious_masks(tmp_path: Path) -> None:
    gray = odd_formats(tmp_path / "data")
    with pytest.warns(UserWarning) as caught:
        samples = load_source(str(tmp_path / "data"))
    messages = " | ".join(str(w.message) for w in caught)
    assert "p4.png has no foreground (myelin) pixel" in messages
    assert "p5.png has foreground everywhere" in messages
    assert "p2.png: " in messages and "label image with several classes" in messages
    assert [s.name for s in samples] == [f"p{i}" for i in range(6)]
    for s, g in zip(samples, gray, strict=True):  # every format reads as the same gray values
        assert s.image.dtype == np.float32
        np.testing.assert_allclose(s.image, g / 255, atol=1e-6)
        assert s.mask.dtype == np.uint8 and set(np.unique(s.mask)) <= {0, 1}
    assert samples[4].mask.sum() == 0 and samples[5].mask.all()
    assert samples[2].mask[: SIDE // 2].sum() == 0 < samples[2].mask[SIDE // 2 :].sum()


def test_odd_formats_run_end_to_end_with_one_line_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    odd_formats(data)
    out = tmp_path / "run"
    sets = ["--set", "loop.repetitions=1", "--set", "data.pixel_size=0.1"]
    assert cli(data, out, *sets) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("activeseg: warning: ")]
    text = "\n".join(warnings)
    assert "p4.png has no foreground" in text and "p5.png has foreground everywhere" in text
    assert "no pixel size for 6 image(s)" in text and "--pixel-size" in text
    assert "Traceback" not in err and "warnings.warn" not in err
    assert len(read_records(out / "records-std_edt-rep0.jsonl")) == 3


# --- property: odd arrays through reading and preprocessing ------------------------------

DTYPES = ["uint8", "uint16", "int16", "float32", "float64", "bool"]


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 48),
    w=st.integers(1, 48),
    channels=st.sampled_from([0, 1, 3, 4]),
    image_dtype=st.sampled_from(DTYPES),
    mask_dtype=st.sampled_from(DTYPES),
    scale=st.sampled_from([1.0, 255.0, 1e4, -3.0]),
    p=st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
def test_property_odd_arrays_read_and_tile_into_finite_binary_patches(
    h: int,
    w: int,
    channels: int,
    image_dtype: str,
    mask_dtype: str,
    scale: float,
    p: int,
    seed: int,
) -> None:
    """Any 2-D array of these dtypes (gray or 1/3/4 channels) stored as TIFF reads as a
    finite image in [0, 1] and a binary mask, and tiles into the expected patch count."""
    # 1-bit colour TIFFs are not valid baseline TIFF: tifffile writes but cannot read them
    # (read_image then refuses them with a UserError).
    assume(channels < 3 or "bool" not in (image_dtype, mask_dtype))
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 0 else (h, w, channels)

    def array(dtype: str) -> np.ndarray:
        values = rng.random(shape) * scale
        if dtype == "bool":
            return values > scale / 2
        if np.issubdtype(np.dtype(dtype), np.integer):
            info = np.iinfo(np.dtype(dtype))
            return np.clip(values, info.min, info.max).astype(dtype)
        return values.astype(dtype)

    with tempfile.TemporaryDirectory() as tmp:
        image_path, mask_path = Path(tmp) / "image.tif", Path(tmp) / "mask.tif"
        tifffile.imwrite(image_path, array(image_dtype), photometric=_photometric(channels))
        tifffile.imwrite(mask_path, array(mask_dtype), photometric=_photometric(channels))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multi-level masks warn; that is tested elsewhere
            image, mask = read_image(image_path), read_mask(mask_path)
    assert image.shape == mask.shape == (h, w) and image.dtype == np.float32
    assert np.isfinite(image).all() and 0 <= image.min() and image.max() <= 1
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    expected = (h // p) * (w // p)
    if expected == 0:
        with pytest.raises(UserError, match="no image is as large as one patch"):
            tile([Sample("s", image, mask, None)], p)
        return
    patches = tile([Sample("s", image, mask, None)], p)
    assert len(patches) == expected and patches.images.shape == (expected, 1, p, p)
    normalised = Normalizer.fit(patches.images)(patches.images)
    assert np.isfinite(normalised).all() and set(np.unique(patches.masks)) <= {0, 1}


def _photometric(channels: int) -> str:
    return "rgb" if channels in (3, 4) else "minisblack"
