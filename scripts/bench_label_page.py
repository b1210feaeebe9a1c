"""How fast the labeling page answers a key: time from a key press to the next image on screen.

Builds a human run on Fashion-MNIST PNGs whose round-0 batch holds ``--batch`` (100) images with the
model's suggestions, serves it with ``ssal label serve``, and labels the whole batch in headless
Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium), one key per image. The page
itself measures each press (``performance.now()`` at keydown to the frame after the next image is
decoded); the reference, in the same run and browser, is a bare page that only swaps an ``<img>``
between the same, preloaded images on each key. Also printed: how long each answer takes to be
stored (the POST round trip, fsync included). ``--screenshot PATH`` saves the page mid-batch (the
README's picture).

    .venv/bin/python scripts/bench_label_page.py [--batch 100] [--screenshot docs/img/label_page.png]
"""

from __future__ import annotations

import argparse
import csv
import http.server
import json
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_demo import CLASSES, write_images  # noqa: E402  (a sibling script: Fashion-MNIST as PNG folders)

BARE_PAGE = """<!doctype html><meta charset="utf-8"><body style="margin:0">
<img id="image" style="width:560px;height:560px;image-rendering:pixelated">
<script>
const urls = %s; const img = document.getElementById("image"); let k = 0; window.ssalTimings = [];
const cache = urls.map((u) => { const i = new Image(); i.src = u; i.decode().catch(() => {}); return i; });
function show(t0) { img.src = urls[k]; img.decode().then(() => requestAnimationFrame(() => {
  if (t0 !== null) window.ssalTimings.push(performance.now() - t0); img.dataset.shown = String(k); })); }
document.addEventListener("keydown", () => {
  const t0 = performance.now(); k = Math.min(k + 1, urls.length - 1); show(t0); });
show(null);
</script>"""


def ssal(*args: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "ssal", *args], capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        sys.exit(f"ssal {' '.join(args)} failed:\n{proc.stdout[-1000:]}{proc.stderr[-2000:]}")
    return proc


def make_run(out: Path, batch: int) -> tuple[Path, dict[str, str]]:
    """A human run whose open batch (round 0) has ``batch`` queries with suggestions."""
    truth = write_images(out, 2000, 0)
    recipe = {
        "seed": 0, "cache_dir": str(out / "cache"), "output_dir": str(out / "run"),
        "data": {"dataset": "imagefolder", "root": str(out / "data"), "image_size": 28, "channels": 1,
                 "classes": CLASSES},
        "model": {"backbone": "cnn_small"},
        "train": {"method": "supervised", "steps": 150, "batch_size": 32},
        "active": {"oracle": "human", "initial": 50, "budget": batch, "rounds": 1, "initial_strategy": "random",
                   "strategy": "margin"},
    }
    # the labeled layout is only how write_images stores the truth: the run sees one unlabeled folder
    flat = out / "pool"
    for rel in list(truth):
        (flat / Path(rel).name).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(out / "data" / rel, flat / Path(rel).name)
    truth = {Path(rel).name: c for rel, c in truth.items()}
    recipe["data"]["root"] = str(flat)
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = out / "run"
    ssal("run", str(path), "--no-progress")
    rows = list(csv.DictReader((run / "rounds" / "initial" / "queries.csv").open()))
    for row in rows:
        row["label"] = truth[row["path"]]
    answers = out / "initial_answers.csv"
    with answers.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ssal("label", "import", str(run), str(answers))
    ssal("run", "--resume", str(run), "--no-progress")
    return run, truth


def chromium(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--window-size={width},{height}"):
        options.add_argument(a)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def press_through(driver, keys: list[str], shown_after: list[str], screenshot=None) -> list[float]:
    """Press ``keys`` one by one, each after the previous image is on screen; the page's timings."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    body = driver.find_element(By.TAG_NAME, "body")
    for k, (key, want) in enumerate(zip(keys, shown_after, strict=True)):
        if screenshot and k == len(keys) * 3 // 8:
            screenshot()
        body.send_keys(key)
        if want:
            WebDriverWait(driver, 10).until(
                lambda d, want=want: d.find_element(By.ID, "image").get_attribute("data-shown") == want)
    return driver.execute_script("return window.ssalTimings")


def serve_bare(folder: Path, names: list[str]) -> tuple[http.server.ThreadingHTTPServer, str]:
    (folder / "bare.html").write_text(BARE_PAGE % json.dumps([f"/img/{n}" for n in names]))

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(folder), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/bare.html"


def stats(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=20)
    return f"p50 {statistics.median(ms):5.1f}  p95 {q[18]:5.1f}  max {max(ms):5.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/ssal_bench_label_page"))
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--screenshot", type=Path, default=None, help="save the page mid-batch here (PNG)")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    t0 = time.perf_counter()
    run, truth = make_run(args.out, args.batch)
    print(f"run with an open batch of {args.batch} made in {time.perf_counter() - t0:.0f} s: {run}")

    server = subprocess.Popen([sys.executable, "-m", "ssal", "label", "serve", str(run), "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    url = re.search(r"http://\S+/", line).group(0)
    driver = chromium(1100, 760)
    try:
        driver.get(url + "api/batch")
        batch = json.loads(driver.find_element("tag name", "pre").text)
        items, classes = batch["items"], batch["classes"]
        keys = [str((classes.index(truth[it["path"]]) + 1) % 10) for it in items]
        shown = [str(it["index"]) for it in items[1:]] + [""]
        driver.get(url)
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(driver, 20).until(
            lambda d: d.find_element("id", "image").get_attribute("data-shown") == str(items[0]["index"]))

        def shot() -> None:
            if args.screenshot:
                from PIL import Image

                driver.save_screenshot(str(args.out / "page.png"))
                Image.open(args.out / "page.png").convert("RGB").quantize(64).save(args.screenshot, optimize=True)
                print(f"screenshot: {args.screenshot} ({args.screenshot.stat().st_size // 1024} KiB)")

        page = press_through(driver, keys, shown, shot)
        WebDriverWait(driver, 20).until(lambda d: d.find_element("id", "status").text == "all answers saved")
        posts = [e["duration"] for e in driver.execute_script("return performance.getEntriesByType('resource')")
                 if "/api/answer" in e["name"]]
        stored = json.loads((run / "rounds" / "r00" / "answers.json").read_text())
        right = sum(classes[y] == truth[p] for (i, y), p in zip(stored["answers"], stored["paths"], strict=True))

        images = args.out / "bare" / "img"
        images.mkdir(parents=True)
        for it in items:
            shutil.copy(args.out / "pool" / it["path"], images / it["path"])
        bare_server, bare_url = serve_bare(args.out / "bare", [it["path"] for it in items])
        driver.get(bare_url)
        WebDriverWait(driver, 20).until(lambda d: d.find_element("id", "image").get_attribute("data-shown") == "0")
        bare = press_through(driver, ["x"] * (len(items) - 1), [str(k) for k in range(1, len(items))])
        bare_server.shutdown()
    finally:
        driver.quit()
        server.terminate()
        server.wait(timeout=30)
    print(f"stored answers: {len(stored['answers'])} of {len(items)}, {right} equal to the keys pressed")
    print(f"key -> next image on screen, {len(page)} presses (ssal page): {stats(page)}")
    print(f"key -> next image on screen, {len(bare)} presses (bare <img> swap, reference): {stats(bare)}")
    print(f"ratio ssal / bare: p50 {statistics.median(page) / statistics.median(bare):.2f}, "
          f"p95 {statistics.quantiles(page, n=20)[18] / statistics.quantiles(bare, n=20)[18]:.2f}")
    print(f"answer stored (POST round trip, fsync included), {len(posts)} answers: {stats(posts)}")
    p95 = statistics.quantiles(page, n=20)[18]
    print(f"target: key -> next image < 50 ms: {'met' if p95 < 50 else 'NOT met'} (p95 {p95:.1f} ms)")


if __name__ == "__main__":
    main()
