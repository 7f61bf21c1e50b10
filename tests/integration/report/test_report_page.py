"""The run report as a researcher opens it: what it holds, and how it looks in a real browser."""

import json
import shutil
import subprocess

import pytest
import yaml

from recoverlm.config import RunConfig
from recoverlm.pipeline import run_experiment


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model, prompt_file):
    out = tmp_path_factory.mktemp("report") / "run"
    cfg = RunConfig.model_validate({
        "model": str(tiny_model),
        "degrade": {"method": "prune.magnitude", "params": {"sparsity": 0.5}},
        "data": {"prompts": str(prompt_file), "n_heldout": 4, "max_new_tokens": 8, "top_k_logits": 8},
        "recover": {"offpolicy_steps": 2, "batch_size": 4, "lr": 1e-3, "eval_every": 1, "warmup_steps": 1},
    })
    run_experiment(cfg, out, progress=False, log=lambda _: None)
    return out


def test_report_holds_samples_machine_timings_and_config(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [set(s) for s in metrics["samples"]] == [{"prompt", "teacher", "degraded", "recovered"}] * 3
    record = json.loads((run_dir / "run.json").read_text())
    assert set(record["stages"]) == {"degrade", "recover", "evaluate", "cka"}
    assert all(v >= 0 for v in record["stages"].values())
    env = record["environment"][0]
    assert env["versions"]["torch"] and env["device"] and isinstance(env["native_bf16"], bool)
    summary = (run_dir / "summary.md").read_text()
    for heading in ("## Sample generations", "## Where it ran", "## Config"):
        assert heading in summary
    assert metrics["samples"][0]["prompt"].split()[0] in summary
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["recover"]["offpolicy_steps"] == 2


def test_a_resumed_run_keeps_the_stage_times_it_reuses(run_dir):
    before = json.loads((run_dir / "run.json").read_text())["stages"]
    (run_dir / "cka.json").unlink()
    cfg = RunConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    run_experiment(cfg, run_dir, progress=False, log=lambda _: None)
    after = json.loads((run_dir / "run.json").read_text())["stages"]
    assert {k: after[k] for k in ("degrade", "recover", "evaluate")} == {k: before[k] for k in ("degrade", "recover", "evaluate")}
    assert after["cka"] > before["cka"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
PROBE = ("<script>addEventListener('load',()=>{const i=[...document.images];document.body.setAttribute('data-probe',"
         "JSON.stringify({images:i.length,broken:i.filter(x=>!(x.complete&&x.naturalWidth>0)).length,"
         "tables:[...document.querySelectorAll('table')].map(t=>t.rows[0].cells[0].textContent)}))})</script>")


def _chromium(*args, cwd):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_report_renders_in_a_real_browser(run_dir, tmp_path):
    from matplotlib.image import imread

    page = (run_dir / "report.html").read_text()
    probed = tmp_path / "probe.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", probed.as_uri(), cwd=tmp_path)
    start = dom.index('data-probe="') + len('data-probe="')
    probe = json.loads(dom[start:dom.index('"', start)].replace("&quot;", '"'))
    assert probe["images"] >= 3 and probe["broken"] == 0, probe
    assert {"metric", "prompt", "stage"} <= set(probe["tables"]), probe  # fidelity, samples, timings

    shot = tmp_path / "report.png"
    _chromium("--window-size=1200,1600", f"--screenshot={shot}", (run_dir / "report.html").as_uri(), cwd=tmp_path)
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (1600, 1200)
    ink = (pixels.mean(axis=-1) < 0.9).mean()  # share of pixels that are not near-white
    assert 0.02 < ink < 0.6, ink


def test_the_users_text_is_shown_not_run(run_dir, tmp_path):
    """A folder name and a config are the user's text: in the page they are text, whatever they hold."""
    from recoverlm.report.summary import write_report

    odd = tmp_path / "<img src=x onerror=alert(1)>"
    shutil.copytree(run_dir, odd, symlinks=True)
    with open(odd / "config.yaml", "a", encoding="utf-8") as fh:
        fh.write("# ````\n# <script>alert(2)</script>\n")
    write_report(odd)
    page = (odd / "report.html").read_text()
    assert "<img src=x" not in page and "<script>alert(2)" not in page
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page
