"""The README's main job (``bta-core demo``), ``bta-core models`` and CLI error reporting."""

import json

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
