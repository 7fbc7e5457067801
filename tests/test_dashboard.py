"""optuna-dashboard on a study folder's journal, as the README says to watch a study: its JSON API
serves exactly what the searcher was told, and a headless Chromium renders the study's page
with its trials."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest
from PIL import Image

from harness.study_storage import JOURNAL
from tests.ray_head import BIN, free_port
from tests.tiny import FINISHED, finished_study

NAME = "watched-study"
BEST = 2  # the trial number of FINISHED's highest final value
APP_BAR = (33, 150, 243)  # the dashboard's blue header bar


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory) -> Iterator[str]:
    """`optuna-dashboard <journal>` serving a finished study folder; its URL. Stopped with its
    process group."""
    tmp = tmp_path_factory.mktemp("dashboard")
    journal = finished_study(tmp, name=NAME) / JOURNAL
    url = f"http://127.0.0.1:{free_port()}"
    log = tmp / "optuna-dashboard.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "optuna-dashboard"), str(journal), "--host", "127.0.0.1",
                                 "--port", url.rsplit(":", 1)[1]],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"optuna-dashboard exited {proc.returncode}:\n{log.read_text()}"
            try:
                get_json(f"{url}/api/studies")
                break
            except OSError:
                assert time.monotonic() < deadline, f"optuna-dashboard did not answer in 60 s:\n{log.read_text()}"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def expected_trials() -> list[dict]:
    """What the searcher was told of each FINISHED trial, in the dashboard's words."""
    trials = []
    for i, (weight, crops, temp, value) in enumerate(FINISHED):
        if value is None:
            state, values, steps = "Fail", None, []
        elif i == len(FINISHED) - 1:
            state, values, steps = "Pruned", [value], [(1, value)]
        else:
            state, values, steps = "Complete", [value], [(1, value - 0.1), (2, value)]
        trials.append({"number": i, "state": state, "values": values, "steps": steps,
                       "params": {"loss.mil_weight": str(weight), "data.crops.local_crops": str(crops),
                                  "loss.teacher_temp": str(temp)},
                       "tune_trial_id": f"e{i}"})
    return trials


def test_the_api_serves_what_the_searcher_was_told(dashboard):
    studies = get_json(f"{dashboard}/api/studies")["study_summaries"]
    assert [(s["study_name"], s["directions"]) for s in studies] == [(NAME, ["maximize"])]
    detail = get_json(f"{dashboard}/api/studies/{studies[0]['study_id']}")
    served = [{"number": t["number"], "state": t["state"], "values": t.get("values"),
               "steps": [(v["step"], pytest.approx(v["value"])) for v in t["intermediate_values"]],
               "params": {p["name"]: p["param_external_value"] for p in t["params"]},
               "tune_trial_id": {a["key"]: a["value"] for a in t["user_attrs"]}["tune_trial_id"]}
              for t in detail["trials"]]
    assert served == expected_trials()
    assert [t["number"] for t in detail["best_trials"]] == [BEST]
    assert {a["key"]: a["value"] for a in detail["user_attrs"]} == {"metric": "probe_top1", "mode": "max",
                                                                    "max_t": "2"}


def visible_text(dom: str) -> str:
    """The words a reader sees in a rendered page: no scripts, styles or tags."""
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="no chromium binary on PATH (Debian: apt-get install chromium); the API test still ran")
def test_a_browser_shows_the_study_and_its_trials(dashboard, tmp_path):
    study_id = get_json(f"{dashboard}/api/studies")["study_summaries"][0]["study_id"]
    png = tmp_path / "dashboard.png"
    # The page is a React app that fetches the study: virtual time lets its requests and renders finish.
    browser = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         "--run-all-compositor-stages-before-draw", "--virtual-time-budget=10000", "--window-size=1280,900",
         f"--screenshot={png}", "--dump-dom", f"{dashboard}/dashboard/studies/{study_id}"],
        capture_output=True, text=True, timeout=180)
    assert browser.returncode == 0, browser.stderr[-3000:]
    text = visible_text(browser.stdout)
    assert f"{NAME} (id={study_id})" in text  # the study's page, not the list of studies
    weight, crops, temp, value = FINISHED[BEST]
    assert f"Best Trial (number={BEST}) {value} Params = [loss.mil_weight: {weight}, " \
           f"data.crops.local_crops: {crops}, loss.teacher_temp: {temp}]" in text
    # the intermediate-values plot draws every trial that reported one: all but the failed trial
    legend = [int(n) for n in re.findall(r"trial #(\d+)", text)]
    assert legend == [i for i, trial in enumerate(FINISHED) if trial[3] is not None]
    assert "Complete Fail Pruned" in text  # the timeline's legend: the three states the study holds

    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 900)
    colours = image.getcolors(maxcolors=1 << 20)
    assert len(colours) > 100, f"a nearly blank screenshot: {len(colours)} colours"
    assert image.getpixel((640, 10)) == APP_BAR  # the dashboard itself drew the page
