"""bench.coverage on the tiny model and plan: the families, the scan, the report (no encryption)."""

from bench import coverage


def test_families_have_the_requested_sizes_and_shapes():
    fams = coverage.families(16, windows=5, held_out=3)
    assert [len(v) for v in fams.values()] == [5, 95, 3, 3, 3, 3]
    assert all(len(p) == 16 for v in fams.values() for p in v)
    assert fams["single-byte runs"][0] == b" " * 16
    assert coverage.families(16, 5, 3) == fams  # seeded


def test_scan_counts_and_explains_refusals(tiny, tiny_plan):
    view = tiny[3]
    runs = [bytes([b]) * 8 for b in range(250, 256)]
    row = coverage.scan(tiny_plan, view, runs)
    assert row["prompts"] == 6 and row["in_domain"] == 6 and row["refused"] == []  # calibrated on runs
    printable = range(32, 127)
    pairs = [bytes([a, b]) * 4 for a in printable for b in printable if a != b]
    row = coverage.scan(tiny_plan, view, pairs[:2000])
    assert row["in_domain"] < row["prompts"] == 2000
    first = row["refused_examples"][0]
    assert "the domain edge" in first["why"] and first["prompt"] in row["refused"]


def test_markdown_compares_with_before():
    fam = {"test windows": {"prompts": 4, "in_domain": 4, "refused_examples": [], "refused": []}}
    row = {"prompts": 4, "in_domain": 3, "refused_examples": [], "refused": ["x"]}
    old = {"families": {"test windows": row}}
    md = coverage.markdown({"plan": "p", "context": 8, "families": fam}, old)
    assert "| test windows | 4 | 4 (100.00%) | 3 (75.00%) |" in md


def test_bad_arguments_are_usage_errors_before_any_work(tmp_path):
    import pytest

    bad = tmp_path / "b.json"
    bad.write_text("{}")
    for argv in (["--before", str(tmp_path / "missing.json")], ["--before", str(bad)], ["--windows", "0"],
                 ["--encrypted", "2"], ["--out", str(tmp_path / "no" / "x.json")]):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            coverage.main(argv)
        assert exc.value.code == 2
