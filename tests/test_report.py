"""The report: the summary of every claim first, the HTML rendering, and `report latest` over
every run of the latest command. Built from the stored baselines (no timing)."""
import json
import shutil
from pathlib import Path

import pytest

from ssmbench.harness import cli
from ssmbench.harness.report import header, write_report
from ssmbench.harness.store import job_runs, read_manifest

BASELINES = Path(__file__).resolve().parent.parent / "results" / "baselines"


def stored(suite: str, results: Path, job: str | None, created: str) -> Path:
    """A copy of ``suite``'s baseline under ``results``, as a run of job ``job`` made at ``created``."""
    source = next((BASELINES / suite).iterdir())
    manifest = read_manifest(source)
    folder = results / f"{manifest['run_id']}-{job}"
    shutil.copytree(source, folder)
    manifest.update(created=created, **({"job_id": job} if job else {}))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def results(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    stored("peers", out, "job-a", "2026-01-01T00:00:00+00:00")
    stored("jamba_cache", out, "job-b", "2026-01-02T00:00:00+00:00")
    stored("ssd_speedup", out, "job-b", "2026-01-02T00:01:00+00:00")
    return out


def test_report_latest_reports_every_run_of_the_latest_command(results, tmp_path, capsys):
    assert cli.main(["--results-dir", str(results), "--reports-dir", str(tmp_path / "reports"), "report"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    claims = json.loads((folder / "claims.json").read_text())
    assert {c["suite"] for c in claims} == {"jamba_cache", "ssd_speedup"}  # not the earlier command's peers
    text = (folder / "index.md").read_text()
    # The first screen is the summary: the machine, the tally, then one table of every claim.
    head = text.split("\n## Suite ")[0]
    assert head.index("Measured on: AMD EPYC (2 cores") < head.index("### Every claim of this report")
    assert "6 claims: " in head
    for c in claims:
        assert f"| {c['claim_id']} " in head
    lines = [line for line in head.splitlines() if line.startswith("| C")]
    numbers = [int(line.split("|")[1].strip().split(".")[0][1:]) for line in lines]
    assert len(lines) == len(claims) and numbers == sorted(numbers) and numbers[0] == 3  # C3 (ssd_speedup) first
    state = next(line for line in lines if "C3.state-size" in line)
    verdict = next(c["verdict"] for c in claims if c["claim_id"] == "C3.state-size")
    assert f"| {verdict} |" in state and "[ssd_speedup_N.png](ssd_speedup_N.png)" in state


def test_runs_of_one_job_in_the_order_made_and_a_run_without_a_job_alone(results, tmp_path):
    b1, b2 = sorted((p for p in results.iterdir() if p.name.endswith("job-b")),
                    key=lambda p: read_manifest(p)["created"])
    assert job_runs(results, b2) == [b1, b2]
    lone = stored("peers", results, None, "2026-01-03T00:00:00+00:00")
    assert job_runs(results, lone) == [lone]


def test_html_report_has_the_summary_coloured_verdicts_and_headers_in_words(results, tmp_path):
    folder = write_report(sorted(results.iterdir())[:2], out_dir=tmp_path / "reports")
    page = (folder / "index.html").read_text()
    assert page.index("Measured on:") < page.index("Every claim of this report") < page.index("Suite ")
    assert "<td class='verdict holds'>holds</td>" in page and "td.holds{background:" in page
    assert "overflow-wrap:anywhere" in page  # long cells wrap
    assert "<th>median (ms)</th>" in page and "<th>median_ms</th>" not in page
    assert "<a href='jamba_cache.png'>jamba_cache.png</a>" in page


@pytest.mark.parametrize("column, words", [("median_ms", "median (ms)"), ("ci_high_ms", "95% CI high (ms)"),
                                           ("formula_bytes", "formula (bytes)"), ("tokens_per_s", "tokens/s"),
                                           ("kv_heads", "kv heads")])
def test_headers_in_words_with_units(column, words):
    assert header(column) == words


def test_one_run_command_gives_its_runs_one_job_id(monkeypatch, tmp_path):
    from ssmbench.harness import session
    from ssmbench.harness.runner import Summary

    made = []

    def start_run(label, cases, **options):
        made.append((options["suite"], options["job_id"]))
        return Summary(tmp_path / label)

    monkeypatch.setattr(session, "start_run", start_run)
    for _ in range(2):
        assert cli.main(["--results-dir", str(tmp_path), "run", "--suite", "jamba_cache,ssd_speedup", "--quiet"]) == 0
    assert [s for s, _ in made] == ["jamba_cache", "ssd_speedup"] * 2
    jobs = [j for _, j in made]
    assert jobs[0] == jobs[1] != jobs[2] == jobs[3]


def test_a_run_measured_on_two_machines_is_reported_per_machine(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    folder = stored("jamba_cache", results, None, "2026-01-01T00:00:00+00:00")
    lines = (folder / "rows.jsonl").read_text().splitlines()
    half = len(lines) // 2
    rows = [json.loads(line) for line in lines]
    for i, row in enumerate(rows):
        row["fingerprint"] = "aaaaaaaaaaaa" if i < half else "bbbbbbbbbbbb"
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = (write_report([str(folder)], out_dir=tmp_path / "reports") / "index.md").read_text()
    assert "## Suite jamba_cache, measured on fingerprint aaaaaaaaaaaa" in text
    assert "## Suite jamba_cache, measured on fingerprint bbbbbbbbbbbb" in text
    summary = text.split("\n## Suite ")[0]
    assert "| machine " in summary and "fingerprint bbbbbbbbbbbb" in summary
