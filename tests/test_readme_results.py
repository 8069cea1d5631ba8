"""Every table the README shows is a verbatim copy of a committed results file that a README command writes."""

import json
from pathlib import Path

from hive_hf.runs.records import readme_blocks, write_results

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tables_equal_the_committed_results_files():
    blocks = readme_blocks((ROOT / "README.md").read_text())
    for path, copy in blocks.items():
        source = ROOT / path
        assert source.is_file(), f"README quotes {path}, which is not committed"
        assert copy == source.read_text().strip() + "\n", f"README's copy of {path} differs from the file"
        meta = json.loads(source.with_suffix(".json").read_text())
        assert meta["command"] and meta["environment"]["transformers"] and meta["environment"]["threads"]


def test_results_files_round_trip_through_a_readme(tmp_path):
    md = write_results(tmp_path / "results" / "x", "| a |\n|---|\n| 1 |", {"a": 1}, command="python x.py",
                       seeds=[0, 1], threads=1)
    text = md.read_text()
    assert text.startswith("| a |") and "`python x.py`: seeds 0 1, 1 thread(s)" in text
    readme = f"intro\n<!-- results: {md} -->\n{text}<!-- /results -->\nmore\n"
    assert readme_blocks(readme) == {str(md): text}
    assert json.loads(md.with_suffix(".json").read_text())["results"] == {"a": 1}


def test_fill_readme_copies_each_file_into_its_block(tmp_path):
    (tmp_path / "r.md").write_text("| new |\n")
    readme = "a\n<!-- results: r.md -->\n| old |\n<!-- /results -->\nb\n"
    from hive_hf.runs.records import fill_readme

    assert fill_readme(readme, tmp_path) == "a\n<!-- results: r.md -->\n| new |\n<!-- /results -->\nb\n"


def test_recorded_commands_never_hold_a_token():
    from hive_hf.runs.records import command_line

    line = command_line(["x.py", "--hub_token", "hf_secret", "--token=hf_other", "--seed", "1"])
    assert "hf_secret" not in line and "hf_other" not in line and "--seed 1" in line
