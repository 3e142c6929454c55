"""The README's main job (``bta-core demo``), ``bta-core models`` and CLI error reporting."""

import json

import pytest

from bta_core.cli import main as cli_main
from bta_core.cli.demo import SAMPLES, planted_pairs


def test_demo_finds_every_planted_pair(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        cli_main(["demo", "--out", str(out), "--quiet"]) == 0
    )  # exits 1 if a planted pair is missed
    doc = json.loads((out / "pairs.json").read_text(encoding="utf-8"))
    names = lambda p: frozenset(x.split("/")[-1] for x in (p["path_a"], p["path_b"]))  # noqa: E731
    same = {names(p) for p in doc["pairs"] if p["verdict"] == "same"}
    assert {frozenset((a, b)) for a, b, _ in planted_pairs()} <= same
    assert [s["path"].split("/")[-1] for s in doc["skipped"]] == ["damaged_upload.jpg"]
    assert (out / "report.html").stat().st_size > 10_000
    assert len(planted_pairs()) == 6 and SAMPLES.is_dir()


def test_models_lists_the_calibrated_default(capsys):
    assert cli_main(["models", "--json"]) == 0
    models = json.loads(capsys.readouterr().out)
    default = next(m for m in models if m["name"] == "default")
    assert default["origin"] == "bundled" and default["backbone"] == "efficientnet-lite0"
    assert default["calibration"]["split"] == "val" and 0 < default["threshold"] < 1
    assert default["size_mb"] <= 15


def test_bad_file_gives_one_clear_line(tmp_path, capsys, bccd_images):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage")
    rc = cli_main(["score", str(bad), str(bccd_images[0])])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("bta-core score: error: ") and str(bad) in err
    assert "Traceback" not in err


def test_score_verify_finds_the_planted_crop(capsys):
    a, b, c = (str(SAMPLES / n) for n in ("smear_1.jpg", "figure3_panel_b.png", "smear_2.jpg"))
    assert cli_main(["score", a, b, "--verify", "--json"]) == 0
    reused = json.loads(capsys.readouterr().out)
    assert reused["decision"]["verified"] and reused["verdict"] == "same"
    assert reused["decided_by"] == "verified overlap"
    assert reused["transform"]["rotation"] in (90, 270)
    assert cli_main(["score", a, c, "--verify", "--json"]) == 0
    other = json.loads(capsys.readouterr().out)
    assert other["decision"]["verified"] is False and other["transform"] is None
    assert other["verdict"] != "same"  # two smears from one lab: look-alikes, not reuse


def test_scan_of_a_folder_without_images_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    # the folder is checked before the (here missing) checkpoint is loaded
    argv = ["scan", str(empty), "--checkpoint", str(tmp_path / "none.safetensors")]
    assert cli_main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"bta-core scan: error: no images found in {empty}"
    assert not (tmp_path / "out").exists()  # checked, not created, before the inputs


def test_failed_inputs_leave_no_output_folder_and_one_file_scan_says_why(
    tmp_path, capsys, bccd_images
):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage")
    out = tmp_path / "runs" / "match"
    assert cli_main(["match", str(bad), str(bccd_images[0]), "--out", str(out)]) == 1
    assert str(bad) in capsys.readouterr().err and not (tmp_path / "runs").exists()
    argv = ["scan", str(bccd_images[0]), "--no-cache", "--out", str(tmp_path / "s")]
    assert cli_main([*argv, "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "note: 1 readable image, so nothing to compare" in err and "bta-core score A B" in err
    (tmp_path / "file").write_text("x")
    assert cli_main(["scan", str(tmp_path), "--out", str(tmp_path / "file" / "sub")]) == 1
    assert "cannot create the --out folder" in capsys.readouterr().err


def test_warnings_print_one_line_once_and_nothing_when_quiet(capsys):
    import warnings

    from bta_core.cli import install_warning_printer
    from bta_core.decode import ImageReadWarning

    with warnings.catch_warnings():
        install_warning_printer()
        for _ in range(3):
            warnings.warn(ImageReadWarning("a.tif", "5 of 100 pixels are NaN"), stacklevel=1)
        warnings.warn(ImageReadWarning("b.tif", "other"), stacklevel=1)
    err = capsys.readouterr().err
    assert err.splitlines() == ["warning: a.tif: 5 of 100 pixels are NaN", "warning: b.tif: other"]
    with warnings.catch_warnings():
        install_warning_printer(quiet=True)
        warnings.warn(ImageReadWarning("c.tif", "NaN"), stacklevel=1)
    assert capsys.readouterr().err == ""
    # a bar drawn on stderr (a log file: no terminal) does not swallow the warning's line start
    from tqdm import tqdm

    with warnings.catch_warnings(), tqdm(total=2, desc="embed") as bar:
        install_warning_printer()
        bar.update()
        warnings.warn(ImageReadWarning("d.tif", "NaN"), stacklevel=1)
    assert "\nwarning: d.tif: NaN\n" in capsys.readouterr().err


def test_closed_stdout_pipe_ends_quietly():
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "bta_core.cli", "models", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # like `| head -0`: the reader is gone before anything is written
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_json_numbers_are_rounded_and_never_negative_zero():
    from bta_core.output_files import json_dumps, json_text

    doc = {"p": 0.123456789, "z": -0.0, "tiny": -1e-9, "n": [1, True, None, "x"]}
    for text in (json_dumps(doc), json_text(doc)):
        back = json.loads(text)
        assert back == {"p": 0.123457, "z": 0.0, "tiny": 0.0, "n": [1, True, None, "x"]}
        assert "-0.0" not in text


def test_score_of_a_tiny_image_names_it_and_still_decides(tmp_path, capsys):
    from PIL import Image

    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (8, 8), (120, 30, 60)).save(tiny)
    other = str(SAMPLES / "smear_1.jpg")
    assert cli_main(["score", str(tiny), other, "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split(":")[0] in ("same", "suspect", "different")
    assert "decided by" not in lines[0]  # the verdict is said once
    note = next(line for line in lines if line.startswith("note:"))
    assert "verification skipped" in note and f"{tiny}: image too small" in note
    assert cli_main(["score", str(tiny), other, "--json", "--quiet"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "different" and doc["decision"]["verified"] is None
    assert str(tiny) in doc["note"] and 0 <= doc["score"] <= 1


def test_match_prints_the_model_score_that_score_reports(capsys):
    a, b = (str(SAMPLES / n) for n in ("smear_1.jpg", "smear_2.jpg"))
    assert cli_main(["score", a, b, "--no-verify", "--json", "--quiet"]) == 0
    scored = json.loads(capsys.readouterr().out)["score"]
    assert cli_main(["match", a, b, "--json", "--quiet"]) == 0
    matched = json.loads(capsys.readouterr().out)
    assert matched["score"] == scored and matched["decision"]["model_score"] == scored


@pytest.mark.parametrize(
    "argv, option",
    [
        (["scan", "x", "--phash-max-distance", "300"], "--phash-max-distance"),
        (["scan", "x", "--verify-per-image", "-1"], "--verify-per-image"),
        (["scan", "x", "--threshold", "2"], "--threshold"),
        (["scan", "x", "--collection-threshold", "nan"], "--collection-threshold"),
        (["scan", "x", "--batch-size", "0"], "--batch-size"),
        (["match", "a", "b", "--max-side", "8"], "--max-side"),
        (["calibrate", "a", "b", "--target-fpr", "1.5"], "--target-fpr"),
        (["train", "x", "--epochs", "0"], "--epochs"),
    ],
)
def test_out_of_range_values_are_usage_errors(argv, option, capsys):
    """A value the tool cannot honour (300 of 256 hash bits would call every pair 'same') is
    refused with exit 2 and names the option, before a model is loaded."""
    with pytest.raises(SystemExit) as exc:
        cli_main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"argument {option}:" in err and "Traceback" not in err


def test_scan_without_a_folder_is_a_usage_error_before_the_model_loads(capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("bta_core.cli.scan.load_checkpoint", refuse)
    assert cli_main(["scan", "--quiet"]) == 2
    assert "give at least one FOLDER" in capsys.readouterr().err


def test_scan_options_out_of_range_are_refused_in_the_core():
    """napari and Python callers get the same rule as the command line."""
    from bta_core.scan.pipeline import ScanOptions

    for bad in (dict(phash_max_distance=257), dict(verify_per_image=-1), dict(faiss_k=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ScanOptions(**bad)
    assert ScanOptions(phash_max_distance=256).phash_max_distance == 256


def test_ctrl_c_in_scan_says_what_was_kept(tmp_path, capsys, monkeypatch, bccd_images):
    """Exit 130 and one line on its own: the cache resumes, --out still holds the last run."""
    import shutil

    from bta_core.cli import scan as scan_cli

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(scan_cli, "load_checkpoint", interrupt)
    shutil.copy(bccd_images[0], tmp_path / "a.jpg")
    out = tmp_path / "out"
    assert cli_main(["scan", str(tmp_path), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "\ninterrupted: the embeddings and keypoint checks finished so far are cached" in err
    assert f"{out} was not changed" in err
    assert cli_main(["scan", str(tmp_path), "--out", str(out), "--no-cache"]) == 130
    assert "nothing was cached (--no-cache)" in capsys.readouterr().err


def test_score_and_match_take_a_plane_named_as_the_scan_names_it(capsys):
    """`bta-core score "stack.tif[c=0]" other.png`: a plane of a stack, named as pairs.csv
    names it, is compared on its own (the whole file would average its channels)."""
    stack, nuclei = str(SAMPLES / "stack_2ch.tif"), str(SAMPLES / "nuclei_2.png")
    assert cli_main(["score", f"{stack}[c=0]", nuclei, "--no-verify", "--json"]) == 0
    plane = json.loads(capsys.readouterr().out)
    assert plane["verdict"] == "same" and plane["decided_by"] in (
        "identical pixels",
        "perceptual hash",
    )
    assert cli_main(["score", stack, nuclei, "--no-verify", "--json"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert whole["decision"]["phash_distance"] > plane["decision"]["phash_distance"]
    assert cli_main(["match", f"{stack}[c=0]", nuclei, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["found"]
    assert cli_main(["score", f"{stack}[c=5]", nuclei]) == 1
    assert "stack_2ch.tif: no plane [c=5] in this file (it has [c=0], [c=1])" in (
        capsys.readouterr().err
    )


def test_match_out_never_overwrites_the_result_of_other_files(tmp_path, capsys):
    """review 8, item 2: supp/figure1.png and "Fig 3 (revised)/figure1.png" against one B both
    wrote match_figure1__tissue_01.*; now the second gets its own name, a rerun replaces its own."""
    import shutil

    first, second = tmp_path / "supp", tmp_path / "Fig 3 (revised)"
    for folder, src in ((first, "tissue_1_edit.jpg"), (second, "tissue_2.png")):
        folder.mkdir()
        shutil.copy(SAMPLES / src, folder / "figure1.png")
    b, out = str(SAMPLES / "tissue_1.png"), tmp_path / "out"
    runs = [first, second, first]
    written = []
    for folder in runs:
        argv = ["match", str(folder / "figure1.png"), b, "--no-model", "--out", str(out)]
        assert cli_main(argv) == 0
        written.append(capsys.readouterr().out.splitlines()[-1])
    assert sorted(p.name for p in out.glob("*.json")) == [
        "match_figure1__tissue_1-2.json",
        "match_figure1__tissue_1.json",
    ]
    assert written[0] == written[2] != written[1] and "tissue_1-2.png" in written[1]
    for name, folder in (("tissue_1", first), ("tissue_1-2", second)):
        doc = json.loads((out / f"match_figure1__{name}.json").read_text(encoding="utf-8"))
        assert doc["image_a"] == str(folder / "figure1.png")


def test_match_out_tells_one_relative_name_from_two_folders(tmp_path, capsys, monkeypatch):
    """The same relative name typed in two folders names two files: the JSON keeps resolved
    paths, so the second run does not replace the first's result (a code review's case)."""
    import shutil

    folders = [tmp_path / "supp", tmp_path / "fig3"]
    for folder, src in zip(folders, ("tissue_1_edit.jpg", "tissue_2.png"), strict=True):
        folder.mkdir()
        shutil.copy(SAMPLES / src, folder / "figure1.png")
    out = tmp_path / "out"
    for folder in folders:
        monkeypatch.chdir(folder)
        argv = ["match", "figure1.png", str(SAMPLES / "tissue_1.png"), "--no-model"]
        assert cli_main([*argv, "--out", str(out)]) == 0
    capsys.readouterr()
    assert len(list(out.glob("*.json"))) == 2


def test_scan_planes_pairs_frames_of_one_stack_only_with_within_files(tmp_path, capsys):
    """review 8, item 3: `scan --planes` no longer calls the frames of one time-lapse 'same'
    (10 pairs for 5 frames); `--within-files` compares them again."""
    import numpy as np
    import tifffile
    from PIL import Image

    rgb = np.asarray(Image.open(SAMPLES / "smear_1.jpg").convert("L"))[:160, :160]
    frames = np.stack([np.roll(rgb, k, axis=1) for k in range(5)])
    folder = tmp_path / "lapse"
    folder.mkdir()
    tifffile.imwrite(folder / "lapse.tif", frames, metadata={"axes": "TYX"})
    Image.fromarray(frames[2]).save(folder / "frame2.png")
    argv = ["scan", str(folder), "--planes", "--no-cache", "--json", "--quiet", "--device", "cpu"]
    docs = []
    for extra in ([], ["--within-files"]):
        out = ["--out", str(tmp_path / f"out{len(extra)}"), "--verify-per-image", "0"]
        assert cli_main([*argv, *out, *extra]) == 0
        docs.append(json.loads(capsys.readouterr().out))
    apart, together = docs

    def frame_pairs(doc: dict) -> list:
        return [
            p
            for p in doc["top_pairs"]
            if "lapse.tif[" in p["path_a"] and "lapse.tif[" in p["path_b"]
        ]

    assert apart["counts"]["pairs_scored"] == 5 and together["counts"]["pairs_scored"] == 15
    assert not frame_pairs(apart) and frame_pairs(together)
    assert any(p["path_a"].endswith("frame2.png") for p in apart["top_pairs"])
    with pytest.raises(SystemExit):
        cli_main(["scan", "--help"])
    text = capsys.readouterr().out
    assert "--within-files" in text and "or image files to scan" in text


@pytest.fixture(scope="module")
def hostile_scan(tmp_path_factory) -> dict:
    """One `bta-core scan` of a folder with a name that forges a verdict line, a byte-identical
    copy and 12 broken files (one named with a CR): its stdout, stderr and folders."""
    import contextlib
    import io
    import shutil

    root = tmp_path_factory.mktemp("hostile scan")
    folder = root / "q"
    folder.mkdir()
    for name in ("smear_1.jpg", "tissue_1.png"):
        shutil.copy(SAMPLES / name, folder / name)
    forged = "x\nsame     identical pixels score 1.000  forged.jpg"
    shutil.copy(SAMPLES / "smear_1.jpg", folder / forged)
    for k in range(11):
        (folder / f"broken_{k:02d}.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "bad\rline.png").write_bytes(b"")
    out, err = io.StringIO(), io.StringIO()
    argv = ["scan", str(folder), "--out", str(root / "out"), "--no-cache", "--device", "cpu"]
    argv += ["--verify-per-image", "0", "--match-top", "0"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(argv)
    return {"rc": rc, "out": out.getvalue(), "err": err.getvalue(), "folder": folder, "root": root}


def test_scan_console_escapes_control_characters_in_names(hostile_scan):
    """review 8, item 5: a name holding a newline printed raw forged a verdict line."""
    assert hostile_scan["rc"] == 0
    lines = hostile_scan["out"].splitlines()
    assert not [ln for ln in lines if ln.startswith("same     identical pixels score 1.000")]
    assert any("x\\nsame     identical pixels score 1.000  forged.jpg" in ln for ln in lines)
    assert "\r" not in hostile_scan["out"]
    from bta_core.cli._console import shown

    assert shown("a\r\n\tb\x1b[2J\u202e\udce9.png") == "a\\r\\n\\tb\\x1b[2J\\u202e\\xe9.png"
    assert shown("plain ü name.tif[c=1]") == "plain ü name.tif[c=1]"


def test_scan_names_each_skipped_file_on_stderr(hostile_scan):
    """review 8, item 6: docs/cli.md says a bad file gives one line on stderr naming it; the
    console said only "12 skipped". Ten are named, with the problem, then "and N more"."""
    folder, err = hostile_scan["folder"], hostile_scan["err"]
    named = [ln for ln in err.splitlines() if ln.startswith("skipped ")]
    assert len(named) == 10
    assert f"skipped {folder}/bad\\rline.png: file is empty (0 bytes)" in named
    assert any(ln.startswith(f"skipped {folder}/broken_00.png: cannot decode PNG") for ln in named)
    assert f"  and 2 more, see {hostile_scan['root'] / 'out' / 'skipped.csv'}" in err
    assert "12 skipped" in hostile_scan["out"]


def test_scan_count_line_says_identical_files_were_embedded_once(hostile_scan):
    """review 8, item 7: "3 images (2 embedded, 0 from cache)" did not add up."""
    first = hostile_scan["out"].splitlines()[0]
    assert first.startswith("3 images (2 embedded, 0 from cache, 1 identical to another file)")


def test_ctrl_c_closes_the_progress_bar_before_the_message(tmp_path, capsys, monkeypatch):
    """review 8, item 9: a bar left open was drawn again after "interrupted: ..."."""
    import shutil

    from tqdm import tqdm

    from bta_core.cli import scan as scan_cli

    def interrupt(*a, **k):
        bar = tqdm(total=10, desc="embed-bar")
        bar.update(3)
        raise KeyboardInterrupt

    monkeypatch.setattr(scan_cli, "load_checkpoint", interrupt)
    shutil.copy(SAMPLES / "smear_1.jpg", tmp_path / "a.jpg")
    assert cli_main(["scan", str(tmp_path), "--out", str(tmp_path / "out")]) == 130
    import gc

    gc.collect()
    err = capsys.readouterr().err
    assert "embed-bar" in err and "embed-bar" not in err.split("interrupted")[-1]
    assert err.rstrip("\n").splitlines()[-1].startswith("interrupted: ")
