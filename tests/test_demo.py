import json

from byol.cli import main


def test_demo_evaluates_byol_and_random_init_identically_and_writes_the_report(tmp_path, capsys):
    run = tmp_path / "demo"
    args = ["demo", "--preset", "tiny", "--quiet", "--run-dir", str(run)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "BYOL (online encoder)" in out and "random init" in out and str(run) in out
    summary = json.loads((run / "demo.json").read_text())
    assert [r["init"] for r in summary["rows"]] == ["pretrained", "random"]
    byol = json.loads((run / "eval" / "linear-cached-standardized_synthetic_pretrained.json").read_text())
    rand = json.loads((run / "eval" / "linear-cached-standardized_synthetic_random.json").read_text())
    assert byol["settings"] == rand["settings"]  # the same protocol and budget
    assert (run / "report" / "report.md").is_file() and (run / "report" / "collapse.png").is_file()
