"""How long a person waits: ``ssal init`` on a folder, then ``ssal label serve RECIPE`` (the one command),
timed from the command's start until the page serves the first batch and its first image; then, with
``--truth``, a scripted person answers through the page's API at ``--pace`` images a second (the
batches and the images chosen ahead) until ``--rounds`` rounds are trained, pressing "train the next
round" when a batch is complete and nothing runs, and every wait for the next image is timed.

    python scripts/bench_first_image.py --images FOLDER --classes a,b,c [--watch 30]
    python scripts/bench_first_image.py --images FOLDER --classes a,b,c --truth labels.csv --rounds 4 \
        [--set active.lookahead=0]

Prints the seconds to the page's first batch and first image (with the time a bare ``python -c 'import
torch'`` takes on this machine as the reference: the floor of any command that trains), the page's
progress line after ``--watch`` seconds, when each round was trained (with what the page said it
measured), each wait over 2 s (with what the page said then), and the waits between two answers beyond
the person's own pace (median, p95, max). The recipe is ``ssal init``'s (``--set KEY=VALUE`` changes it,
e.g. ``active.lookahead=0`` for the loop without images chosen ahead), with a fresh cache folder (a
first run has no pretrained encoder). The run it starts is stopped at the end (Ctrl-C to the server)
and its folder removed.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts (bench_label_page: headless Chromium)


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def post(port: int, token: str, path: str, body: dict) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Content-Type": "application/json", "X-SSAL-Token": token})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def saying(state: dict) -> str:
    """What the page says runs (for a wait that began)."""
    return f"{state['busy'] or 'nothing runs'}" + (f", {state['progress']}" if state["progress"] else "")


def told_round(state: dict, trained: int, t0: float) -> int:
    """The last round the page says was trained; a new one is printed with what it measured."""
    done = int(re.match(r"round (\d+):", state["accuracy"]).group(1)) if state["accuracy"] else -1
    if done > trained:
        print(f"{time.perf_counter() - t0:6.0f} s: {state['accuracy']}", flush=True)
    return max(done, trained)


def label_rounds(port: int, truth: dict[str, str], rounds: int, pace: float) -> dict:
    """A scripted person: answers whatever the page offers (a batch, or the images chosen ahead while a
    round trains) at ``pace`` images a second, presses "train the next round" when a batch is complete
    and nothing runs, until ``rounds`` rounds are trained. Every wait between two answers beyond the
    person's own 1 / pace is timed, with what the page said when it began."""
    token = re.search(rb'<meta name="ssal-token" content="([^"]+)">', get(port, "/")[1]).group(1).decode()
    waits, last, trained, said = [], None, -1, None
    t0 = time.perf_counter()
    while True:
        state = json.loads(get(port, "/api/batch")[1])
        r, ahead = state["round"], bool(state.get("ahead"))
        if said is None and last is not None:  # what the page says when the person runs out of images
            said = saying(state)
        trained = told_round(state, trained, t0)
        if trained + 1 >= rounds:
            break
        todo = [it for it in state["items"] if str(it["index"]) not in state["answers"]] if r is not None else []
        if todo:
            body = {"round": r, "index": todo[0]["index"], "label": truth[todo[0]["path"]]}
            status, _ = post(port, token, "/api/answer", {**body, "ahead": True} if ahead else body)
            if status == 200:
                now = time.perf_counter()
                if last is not None:
                    waits.append(max(0.0, now - last - 1.0 / pace))
                    if waits[-1] > 2:
                        print(f"{now - t0:6.0f} s: waited {waits[-1]:.0f} s after answer {len(waits)} (the page said: "
                              f"{said})", flush=True)
                last, said = now, None
                time.sleep(1.0 / pace)
            continue
        if r is not None and not ahead and not state["busy"]:
            post(port, token, "/api/continue", {})
        time.sleep(0.1)
    print(summary(waits, len(waits) + 1, time.perf_counter() - t0), flush=True)
    return {"waits": waits}


PAGE_JS = """
const hidden = (id) => document.getElementById(id).hidden;
return {view: ["single", "gridview", "done"].filter((v) => !hidden(v)).join(","),
        shown: document.getElementById("image").dataset.shown ?? null,
        where: document.getElementById("where").textContent, cont: !hidden("continue")};
"""


def summary(waits: list[float], answers: int, seconds: float) -> str:
    waits = sorted(waits)
    pick = lambda q: waits[min(len(waits) - 1, int(q * len(waits)))] if waits else 0.0  # noqa: E731
    return (f"{answers} answers in {seconds:.0f} s; wait between two images: median {pick(0.5):.2f} s, p95 "
            f"{pick(0.95):.2f} s, max {waits[-1] if waits else 0:.2f} s; waits over 2 s: {sum(w > 2 for w in waits)}, "
            f"{sum(w for w in waits if w > 2):.0f} s in all")


def label_in_browser(port: int, truth: dict[str, str], rounds: int, pace: float) -> dict:
    """A person in headless Chromium (the page as people use it): looks at each image for 1 / ``pace`` s,
    presses its class's key, presses Enter when the done view offers the next round, until ``rounds``
    rounds are trained. A wait is the time from a key press until the next image is on screen (decoded,
    scaled: the page sets ``data-shown`` then), the browser's own work included."""
    from bench_label_page import chromium
    from selenium.webdriver.common.by import By

    url = f"http://127.0.0.1:{port}/"
    classes = json.loads(get(port, "/api/batch")[1])["classes"]
    driver = chromium(1280, 900)
    try:
        driver.get(url)
        body = driver.find_element(By.TAG_NAME, "body")
        waits, pressed, seen, trained, said, checked = [], None, None, -1, None, 0.0
        t0 = time.perf_counter()
        while True:
            now = time.perf_counter()
            if now - checked > 1.0:  # the rounds trained, and what the page says (for a wait that began)
                checked, state = now, json.loads(get(port, "/api/batch")[1])
                trained = told_round(state, trained, t0)
                if trained + 1 >= rounds:
                    break
                if said is None and pressed is not None and now - pressed > 1.0:
                    said = saying(state)
            page = driver.execute_script(PAGE_JS)
            if page["view"] == "single" and page["shown"] and page["shown"] != seen:
                if pressed is not None:
                    waits.append(time.perf_counter() - pressed)
                    if waits[-1] > 2:
                        print(f"{time.perf_counter() - t0:6.0f} s: waited {waits[-1]:.0f} s after answer {len(waits)} "
                              f"(the page said: {said})", flush=True)
                seen, said = page["shown"], None
                time.sleep(1.0 / pace)  # the person looks at it
                body.send_keys(str((classes.index(truth[page["where"].split(" · ")[0]]) + 1) % 10))
                pressed = time.perf_counter()
            elif page["view"] == "done" and page["cont"]:
                body.send_keys("\ue007")  # Enter: train the next round
                time.sleep(0.2)
            else:
                time.sleep(0.02)
        print(summary(waits, len(waits) + 1, time.perf_counter() - t0), flush=True)
        return {"waits": waits}
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--classes", required=True)
    ap.add_argument("--watch", type=float, default=30.0, help="seconds to watch the progress after the first image")
    ap.add_argument("--truth", type=Path, help="a path,label CSV: a scripted person answers with it")
    ap.add_argument("--rounds", type=int, default=3, help="rounds trained while the scripted person labels")
    ap.add_argument("--person", choices=("browser", "api"), default="browser",
                    help="the scripted person presses keys in headless Chromium (default), or posts answers to the "
                         "page's API (no browser)")
    ap.add_argument("--pace", type=float, default=1.0, help="images a second the scripted person answers")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change the recipe 'ssal init' wrote (e.g. active.lookahead=50); repeatable")
    ap.add_argument("--keep-cache", action="store_true",
                    help="use the usual cache folder (a pretrained encoder cached there is reused, so nothing "
                         "pretrains behind the first batch)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ssal-first-image-"))
    ssal = [sys.executable, "-m", "ssal"]
    try:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        floor = time.perf_counter() - t
        t = time.perf_counter()
        init = subprocess.run([*ssal, "init", str(work / "proj"), "--images", str(args.images), "--classes",
                               args.classes], capture_output=True, text=True, check=True)
        init_s = time.perf_counter() - t
        print(init.stdout.strip())
        # a first run has no pretrained encoder cached: a fresh cache folder (unless --keep-cache), and the
        # recipe changes a person would make by hand
        sets = args.set if args.keep_cache else [f"cache_dir={work / 'cache'}", *args.set]
        if sets:
            recipe = work / "proj" / "recipe.yaml"
            body = yaml.safe_load(recipe.read_text())
            for item in sets:
                key, value = item.split("=", 1)
                *path, leaf = key.split(".")
                node = body
                for part in path:
                    node = node.setdefault(part, {})
                node[leaf] = yaml.safe_load(value)
            recipe.write_text(yaml.safe_dump(body, sort_keys=False))
        t0 = time.perf_counter()
        server = subprocess.Popen([*ssal, "label", "serve", str(work / "proj" / "recipe.yaml"), "--port", "0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        port = None
        while port is None:
            line = server.stdout.readline()
            if not line:
                raise SystemExit(f"the server exited: {server.wait()}")
            m = re.search(r" at http://\S+:(\d+)/ \(Ctrl-C to stop\)$", line.rstrip("\n"))
            port = int(m.group(1)) if m else None
        page_s = time.perf_counter() - t0
        while True:
            state = json.loads(get(port, "/api/batch")[1])
            if state["round"] is not None:
                break
            time.sleep(0.1)
        batch_s = time.perf_counter() - t0
        status, body = get(port, f"/api/image/{state['items'][0]['index']}?run={state['run_id']}")
        image_s = time.perf_counter() - t0
        assert status == 200 and body, status
        print(f"\nssal init: {init_s:.1f} s; 'ssal label serve RECIPE' -> page up {page_s:.1f} s, first batch "
              f"({len(state['items'])} images) {batch_s:.1f} s, first image {image_s:.1f} s "
              f"(reference: 'import torch' alone {floor:.1f} s, ratio {image_s / floor:.1f})")
        time.sleep(args.watch)
        state = json.loads(get(port, "/api/batch")[1])
        print(f"after {args.watch:.0f} s more the page says: busy={state['busy']!r}, progress={state['progress']!r}")
        if args.truth:
            with args.truth.open(newline="") as f:
                truth = {row[0]: row[1] for row in csv.reader(f) if len(row) == 2 and row[0] != "path"}
            (label_in_browser if args.person == "browser" else label_rounds)(port, truth, args.rounds, args.pace)
        server.send_signal(signal.SIGINT)
        server.wait(60)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
