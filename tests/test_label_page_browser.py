"""``ssal label serve`` in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``)
driven by Selenium labels a generated run with the keyboard, the way a person would.

The annotator is scripted from the hidden truth of the colour images (tests/test_human_loop.py): for
each image the page shows, the test finds its path in the batch and presses the key of its class. What
the page shows is read from the DOM; what was stored, from the run's answers.json on disk."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssal.run.store import RunDir
from tests.test_human_loop import CLASSES, colour_image, folder_recipe, ssal

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT = 20  # seconds for the page to reach a state (a key's effect takes milliseconds)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SKIP = -1
LEFT, RIGHT, ENTER = "\ue012", "\ue014", "\ue007"  # selenium.webdriver.common.keys.Keys.ARROW_LEFT, ...

# everything the page shows, in one round trip (textContent: hidden elements read too)
STATE_JS = """
const t = (id) => document.getElementById(id).textContent;
const h = (id) => document.getElementById(id).hidden;
const img = document.getElementById("image");
return {position: t("position"), where: t("where"), answer: t("answer"), suggestion: t("suggestion"),
        progress: t("progress"), status: t("status"), folder: t("folder"),
        error: h("error") ? null : t("error"), busy: h("busy") ? null : t("busy"),
        view: ["single", "gridview", "done"].filter((v) => !h(v)).join(","),
        done_title: t("done-title"), done_text: t("done-text"), log: h("log") ? null : t("log"),
        continue_shown: !h("continue"), shown: img.dataset.shown ?? null,
        chosen: [...document.querySelectorAll("#classes button.chosen")].map((b) => b.dataset.label),
        disabled: [...document.querySelectorAll("#classes button")].map((b) => b.disabled),
        tiles: Object.fromEntries([...document.querySelectorAll("#grid .tile")].map(
            (t) => [t.dataset.index, {a: t.querySelector(".a").textContent, cls: t.className}]))};
"""


# ----------------------------------------------------------------------------- the browser, the run, the server

@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module. Missing browser: a failure (CI installs it), never a skip."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: the labeling page's browser tests need Debian's Chromium; "
                    "install it with 'apt-get install chromium chromium-driver' (scripts/test.sh does on CI)",
                    pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # the path: Selenium never downloads
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(folder, hidden truth {path relative to the folder: class}): 60 colour PNGs of 16 px, flat and nested."""
    root = tmp_path_factory.mktemp("label_page_photos") / "photos"
    rng = np.random.default_rng(7)
    truth = {}
    for i in range(60):
        c = int(rng.integers(0, len(CLASSES)))
        rel = Path(["", "2024", "2024/trip"][i % 3]) / f"img_{i:03d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(colour_image(rng, c)).save(root / rel)
        truth[rel.as_posix()] = CLASSES[c]
    return root, truth


@pytest.fixture(scope="module")
def truth(photos) -> dict[str, str]:
    return photos[1]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, photos) -> Path:
    """A human run on the colour folder that stopped awaiting its initial batch (12 queries); copied per test."""
    folder, _ = photos
    tmp = tmp_path_factory.mktemp("label_page")
    proc = ssal("run", str(folder_recipe(tmp, folder, "human")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp / "runs" / "human"
    assert (run / "rounds" / "initial" / "queries.csv").exists(), proc.stdout[-2000:]
    return run


@pytest.fixture(scope="module")
def longer_run(tmp_path_factory, photos) -> Path:
    """Like ``base_run``, but its rounds train 300 steps (seconds, not a fraction of one), so that the page,
    which polls every 2 s, sees the training log while the next round trains."""
    folder, _ = photos
    tmp = tmp_path_factory.mktemp("label_page_longer")
    proc = ssal("run", str(folder_recipe(tmp, folder, "human", train={"steps": 300})))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "runs" / "human"


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(base_run, dst)
    return dst


class Server:
    """``ssal label serve RUN --port P`` in a subprocess (RUN: a run directory, or a recipe whose run it
    starts); its URL from the line that names it."""

    def __init__(self, run: Path, port: int = 0, cont: bool = False, timeout: float = 90):
        cmd = [sys.executable, "-m", "ssal", "label", "serve", str(run), "--port", str(port)]
        self.cont = cont
        self.err = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(cmd + (["--continue"] if cont else []), stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, env=ENV)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first, end = None, time.monotonic() + timeout
        while True:  # 'starting the run of ...' may come first
            try:
                first = self.lines.get(timeout=max(0.1, end - time.monotonic()))
            except queue.Empty:
                first = None
            match = re.search(r"at (http://127\.0\.0\.1:(\d+)/) \(Ctrl-C to stop\)", first or "")
            if match or first is None or time.monotonic() > end:
                break
        if not match:
            self.kill()
            raise AssertionError(f"ssal label serve printed no URL: {first!r}; stderr: {self.stderr()[-3000:]}")
        self.first_line = first
        answered = re.search(r"\((\d+)(?: of \d+)? answered\)", first)
        self.answered = int(answered.group(1)) if answered else None  # what the server found stored
        self.url, self.port = match.group(1), int(match.group(2))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM, as a person stops it (a --continue job it runs is stopped too); the others are killed,
        which is quicker and loses nothing (every answer is stored when it is given)."""
        if not self.cont:
            self.kill()
        elif self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        self.err.close()


@pytest.fixture
def serve(browser):
    """serve(run, port=0, cont=False) -> a started Server; all are stopped at the end of the test."""
    started: list[Server] = []

    def start(run: Path, **kw) -> Server:
        server = Server(run, **kw)
        started.append(server)
        return server

    yield start
    browser.get("about:blank")  # the tab stops polling a server that is gone
    for server in started:
        server.stop()


def click(browser, by: str, selector: str, timeout: float = 10.0) -> None:
    """Click the element ``selector`` names, found again when the page re-rendered it between the find and the
    click (the banner and the grid are redrawn as the run's status changes)."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            browser.find_element(by, selector).click()
            return
        except StaleElementReferenceException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


class Page:
    """The labeling page in the browser, and the scripted annotator who knows the truth."""

    def __init__(self, driver, url: str, run: Path, truth: dict[str, str]):
        self.d, self.run, self.truth = driver, run, truth
        self.open(url)

    def open(self, url: str) -> None:
        self.url = url
        batch = get_json(url + "api/batch")
        self.round, self.items, self.classes = batch["round"], batch["items"], batch["classes"]
        self.n = len(self.items)
        self.d.get(url)

    # reading the page
    def state(self) -> dict:
        return self.d.execute_script(STATE_JS)

    def until(self, cond, what: str, timeout: float = WAIT) -> dict:
        """Poll the page until ``cond(state)`` holds; its state then. On timeout: a failure naming ``what``
        and showing the page's state."""
        end = time.monotonic() + timeout
        while True:
            state = self.state()
            if cond(state):
                return state
            if time.monotonic() > end:
                shown = {k: v for k, v in state.items() if k != "tiles"}
                raise AssertionError(f"the page did not reach: {what} (after {timeout} s); it shows {shown}")
            time.sleep(0.05)

    def at(self, k: int, timeout: float = WAIT) -> dict:
        """Wait until the single view shows image ``k`` (1-based, in query order) on screen."""
        it = self.items[k - 1]
        return self.until(lambda s: s["view"] == "single" and s["position"] == f"Image {k} of {self.n}"
                          and s["shown"] == str(it["index"]) and s["where"].startswith(f"{it['path']} · "),
                          f"image {k} of {self.n} (index {it['index']}, {it['path']}) on screen", timeout)

    def saved(self, timeout: float = WAIT) -> dict:
        return self.until(lambda s: s["status"] == "all answers saved", "status 'all answers saved'", timeout)

    # the annotator
    def press(self, key: str) -> None:
        from selenium.webdriver.common.by import By

        self.d.find_element(By.TAG_NAME, "body").send_keys(key)

    def index(self, k: int) -> int:
        return self.items[k - 1]["index"]

    def right(self, k: int) -> str:
        """The true class of image ``k``, from its path (never from the page's suggestion)."""
        return self.truth[self.items[k - 1]["path"]]

    def key(self, name: str) -> str:
        return str((self.classes.index(name) + 1) % 10)

    def label(self, k: int, typed: dict[int, int]) -> None:
        """Image ``k`` is on screen: press its true class; record it in ``typed`` {index: class}."""
        self.at(k)
        name = self.right(k)
        self.press(self.key(name))
        typed[self.index(k)] = self.classes.index(name)

    def label_all_saved(self, ks, typed: dict[int, int]) -> dict:
        """Label images ``ks`` in order, wait for the next one and for every answer to be stored."""
        for k in ks:
            self.label(k, typed)
        self.at(ks[-1] + 1)
        return self.saved()

    def name(self, y: int) -> str:
        return "skip" if y == SKIP else self.classes[y]

    def stored(self, r: int | None = None) -> dict[int, int]:
        return RunDir(self.run).read_answers(self.round if r is None else r)


def after_key(page: Page, k: int) -> None:
    """After answering image ``k``: the next one is on screen, or the done view after the last."""
    if k < page.n:
        page.at(k + 1)


def labeled_batch_of_a_copy(browser, serve, longer_run: Path, tmp_path: Path, truth: dict[str, str]):
    """A copy of ``longer_run`` served with --continue, its whole batch labeled by keyboard: (run, server, page,
    typed answers {index: class})."""
    run = tmp_path / "run"
    shutil.copytree(longer_run, run)
    server = serve(run, cont=True)
    page = Page(browser, server.url, run, truth)
    typed: dict[int, int] = {}
    for k in range(1, page.n + 1):
        page.label(k, typed)
        after_key(page, k)
    return run, server, page, typed


def progress(n_answered: int, n: int, skipped: int = 0) -> str:
    return f"{n_answered} / {n} labeled" + (f" ({skipped} skipped)" if skipped else "")


# ----------------------------------------------------------------------------- the tests

@pytest.mark.slow  # a browser and a server process (killed and restarted)
def test_a_person_labels_a_batch_with_the_keyboard_through_a_killed_server_and_the_run_takes_the_labels(
        browser, serve, run, truth):
    """The acceptance test: the whole initial batch by keyboard, one undo and one skip on the way; kill -9
    of the server mid-batch loses nothing; a restarted server shows the answers so far; the completed batch
    resumes the run, and the pool holds exactly the typed labels."""
    server = serve(run)
    assert server.first_line.startswith("labeling 12 images of ") and server.answered == 0
    page = Page(browser, server.url, run, truth)
    n = page.n
    assert n == 12 and page.classes == CLASSES and page.round == -1
    state = page.at(1)
    assert state["progress"] == progress(0, n) and state["answer"] == "not answered"
    page.saved()
    typed: dict[int, int] = {}

    page.label(1, typed)
    # image 2: a wrong class first (the page moves on), then z: image 2 again, unanswered as before
    page.at(2)
    wrong = next(c for c in page.classes if c != page.right(2))
    page.press(page.key(wrong))
    state = page.at(3)
    assert state["progress"] == progress(2, n)
    page.saved()
    assert page.stored() == {**typed, page.index(2): page.classes.index(wrong)}
    page.press("z")
    state = page.at(2)
    assert state["answer"] == "not answered" and state["chosen"] == [] and state["progress"] == progress(1, n)
    page.saved()
    assert page.stored() == typed, "the undo withdrew the wrong answer on disk too"
    page.label(2, typed)
    # image 3: skip / unsure
    page.at(3)
    page.press("s")
    typed[page.index(3)] = SKIP
    state = page.at(4)
    assert state["progress"] == progress(3, n, skipped=1)
    for k in (4, 5, 6):
        page.label(k, typed)
    state = page.at(7)
    assert state["progress"] == progress(6, n, skipped=1)
    page.saved()
    assert page.stored() == typed

    server.kill()  # kill -9 mid-batch
    assert page.stored() == typed, "an answer the page called saved is lost after kill -9 of the server"
    page.until(lambda s: s["status"].startswith("server not reachable"), "'server not reachable' in the status")

    server = serve(run)  # a new server, a new port: open the page there
    assert server.answered == 6
    page.open(server.url)
    state = page.at(7)  # the first unanswered image
    assert state["progress"] == progress(6, n, skipped=1) and state["answer"] == "not answered"
    page.press("g")
    state = page.until(lambda s: s["view"] == "gridview", "the grid view")
    for k, it in enumerate(page.items, start=1):
        want = page.name(typed[it["index"]]) if it["index"] in typed else "—"
        assert state["tiles"][str(it["index"])]["a"] == want, f"tile of image {k}"
    page.press("g")
    page.at(7)
    page.press(LEFT)  # through the answered images: each shows its answer
    for k in (6, 5, 4, 3):
        state = page.at(k)
        y = typed[page.index(k)]
        assert state["answer"] == ("skipped / unsure" if y == SKIP else page.classes[y])
        assert state["chosen"] == [page.name(y)]
        if k > 3:
            page.press(LEFT)
    for _ in range(4):
        page.press(RIGHT)
    page.at(7)

    for k in range(7, n + 1):
        page.label(k, typed)
        after_key(page, k)
    state = page.until(lambda s: s["view"] == "done", "the done view")
    assert state["done_title"] == f"All {n} images are answered"
    assert f"ssal run --resume {run}" in state["done_text"]
    assert not state["continue_shown"], "no continue button without --continue"
    state = page.saved()
    assert state["progress"] == progress(n, n, skipped=1)
    assert page.stored() == typed and len(typed) == n

    proc = ssal("run", "--resume", str(run))  # the page may stay open: the server does not hold the run
    assert proc.returncode == 0, proc.stderr[-3000:]
    pool = json.loads((run / "pool.json").read_text())
    entries = {i: y for i, y, _ in pool["labeled"]}
    assert len(pool["labeled"]) == n and entries == typed, "the pool holds exactly the typed labels (skip: -1)"
    assert {r for _, _, r in pool["labeled"]} == {0}
    # the open tab moves on to the batch the run asks for next
    state = page.until(lambda s: "rounds/r00" in s["folder"] and s["view"] == "single" and s["busy"] is None,
                       "the next batch (rounds/r00) in the open tab")
    n_next = len(get_json(server.url + "api/batch")["items"])  # the budget, plus one for the skipped image
    assert n_next == 10 and state["progress"] == progress(0, n_next) and state["position"] == f"Image 1 of {n_next}"


@pytest.mark.slow  # 9 s; the default run keeps the acceptance walk above
def test_keys_typed_while_the_server_is_down_are_sent_when_it_is_back_on_the_same_port(
        browser, serve, run, truth):
    server = serve(run)
    page = Page(browser, server.url, run, truth)
    typed: dict[int, int] = {}
    page.label_all_saved((1, 2), typed)
    before = dict(typed)

    server.kill()
    for k in (3, 4, 5):
        page.label(k, typed)  # the page moves on; images it cannot load are passed over
    state = page.at(6)
    assert state["progress"] == progress(5, page.n)
    page.until(lambda s: s["status"].startswith("server not reachable: 3 answers wait in this tab"),
               "'server not reachable: 3 answers wait in this tab' in the status")
    assert page.stored() == before

    server = serve(run, port=server.port)
    assert server.answered == 2
    state = page.saved(timeout=30)  # retried every second
    assert state["error"] is None and state["progress"] == progress(5, page.n)
    assert page.stored() == typed
    page.label(6, typed)  # and the tab goes on as before
    page.at(7)
    page.saved()
    assert page.stored() == typed


@pytest.mark.slow  # 8 s; the default run keeps the acceptance walk above
def test_answers_typed_while_the_server_is_down_survive_a_reload_of_the_tab(browser, serve, run, truth):
    """The tab keeps unconfirmed answers in the browser's storage: leaving the page before the server is
    back loses none of them, and the page opened again sends them."""
    server = serve(run)
    page = Page(browser, server.url, run, truth)
    typed: dict[int, int] = {}
    page.label_all_saved((1,), typed)
    server.kill()
    for k in (2, 3, 4):
        page.label(k, typed)
    page.until(lambda s: s["status"].startswith("server not reachable: 3 answers wait in this tab"),
               "'server not reachable: 3 answers wait in this tab' in the status")
    assert len(page.stored()) == 1

    browser.get("about:blank")  # the tab leaves while the server is down: what it held in memory is gone
    server = serve(run, port=server.port)
    assert len(page.stored()) == 1
    page = Page(browser, server.url, run, truth)  # the same origin: the browser's storage has the three
    state = page.saved(timeout=30)
    assert state["progress"] == progress(4, page.n)
    assert page.stored() == typed


@pytest.mark.slow  # 5 s; the default run keeps the acceptance walk above
def test_a_reload_mid_batch_loses_nothing_and_reopens_at_the_first_unanswered_image(browser, serve, run, truth):
    server = serve(run)
    page = Page(browser, server.url, run, truth)
    typed: dict[int, int] = {}
    for k in (1, 2, 3):
        page.label(k, typed)
    page.at(4)
    page.press(RIGHT)  # image 4 stays unanswered
    for k in (5, 6):
        page.label(k, typed)
    page.at(7)
    page.saved()

    browser.refresh()
    state = page.at(4)
    assert state["progress"] == progress(5, page.n) and state["answer"] == "not answered"
    assert page.stored() == typed
    page.press(RIGHT)
    state = page.at(5)
    assert state["answer"] == page.right(5) and state["chosen"] == [page.right(5)]
    page.press(LEFT)
    page.label(4, typed)  # image 5 and 6 are answered: it goes on at 5, in order
    page.at(5)
    page.saved()
    assert page.stored() == typed


@pytest.mark.slow  # 5 s; the default run keeps the acceptance walk above
def test_an_earlier_answer_is_changed_from_the_grid(browser, serve, run, truth):
    from selenium.webdriver.common.by import By

    server = serve(run)
    page = Page(browser, server.url, run, truth)
    typed: dict[int, int] = {}
    page.label_all_saved((1, 2, 3, 4), typed)

    page.press("g")
    state = page.until(lambda s: s["view"] == "gridview", "the grid view")
    assert len(state["tiles"]) == page.n
    for k, it in enumerate(page.items, start=1):
        tile = state["tiles"][str(it["index"])]
        if k <= 4:
            assert tile["a"] == page.right(k) and "answered" in tile["cls"].split(), k
        else:
            assert tile["a"] == "—" and "answered" not in tile["cls"].split(), k
    assert "current" in state["tiles"][str(page.index(5))]["cls"].split()

    click(browser, By.CSS_SELECTOR, f'#grid .tile[data-index="{page.index(2)}"]')
    state = page.at(2)
    assert state["answer"] == page.right(2)
    other = next(c for c in page.classes if c != page.right(2))
    page.press(page.key(other))
    page.at(3)
    page.saved()
    assert page.stored() == {**typed, page.index(2): page.classes.index(other)}
    page.press("z")  # undo restores the previous answer of image 2, and shows it
    state = page.at(2)
    assert state["answer"] == page.right(2) and state["chosen"] == [page.right(2)]
    page.saved()
    assert page.stored() == typed
    page.press(page.key(other))  # and the change again
    typed[page.index(2)] = page.classes.index(other)
    page.at(3)
    page.saved()
    assert page.stored() == typed

    page.press("g")
    state = page.until(lambda s: s["view"] == "gridview" and s["tiles"][str(page.index(2))]["a"] == other,
                       f"the grid with {other!r} on the tile of image 2")
    assert [state["tiles"][str(it["index"])]["a"] for it in page.items[:4]] == \
        [page.name(typed[it["index"]]) for it in page.items[:4]]
    assert state["progress"] == progress(4, page.n)

    # the last image from the grid: after its answer the page goes to the first unanswered one (5)
    click(browser, By.CSS_SELECTOR, f'#grid .tile[data-index="{page.index(page.n)}"]')
    page.label(page.n, typed)
    state = page.at(5)
    assert state["progress"] == progress(5, page.n)
    page.saved()
    assert page.stored() == typed


@pytest.mark.slow
def test_a_complete_batch_reaches_the_next_round_from_every_view_with_one_key_or_click(
        browser, serve, longer_run, tmp_path, truth):
    """No dead end: after a fix from the grid the single view shows an answered image of a complete batch
    (the first batch has no suggestion to accept); Enter there, Enter on the grid, or the banner's button
    opens the done view with its 'Train the next round' button."""
    from selenium.webdriver.common.by import By

    run, server, page, typed = labeled_batch_of_a_copy(browser, serve, longer_run, tmp_path, truth)
    page.until(lambda s: s["view"] == "done" and s["continue_shown"], "the done view with #continue")
    for how in ("enter on an answered image", "enter on the grid", "the banner's button"):
        page.press("g")  # back to the grid, then fix image 2 from it
        page.until(lambda s: s["view"] == "gridview", "the grid view")
        click(browser, By.CSS_SELECTOR, f'#grid .tile[data-index="{page.index(2)}"]')
        page.at(2)
        other = next(c for c in page.classes if c != page.name(typed[page.index(2)]))
        page.press(page.key(other))
        typed[page.index(2)] = page.classes.index(other)
        page.at(3)  # the single view, the batch complete
        if how == "enter on the grid":
            page.press("g")
            page.until(lambda s: s["view"] == "gridview", "the grid view")
        if how == "the banner's button":
            click(browser, By.ID, "finish")
        else:
            page.press(ENTER)
        state = page.until(lambda s: s["view"] == "done" and s["continue_shown"], f"the done view ({how})")
        assert state["done_title"] == f"All {page.n} images are answered", how
        page.saved()
        assert page.stored() == typed, how  # Enter changed no answer


@pytest.mark.slow  # 7 s; the default run keeps the acceptance walk above
def test_the_page_stores_answers_while_another_process_holds_the_run(browser, serve, run, truth):
    """A run pretraining or training holds the run's lock for minutes: the page says so and people go on
    labeling (answers go under the answers' lock)."""
    server = serve(run)
    page = Page(browser, server.url, run, truth)
    typed: dict[int, int] = {}
    page.label_all_saved((1,), typed)

    rd = RunDir(run)
    rd.lock()
    try:
        state = page.until(lambda s: s["busy"] is not None, "the banner naming the run in progress", timeout=10)
        assert state["busy"].startswith("Working: a run is in progress (") and f"pid {os.getpid()}" in state["busy"]
        assert "your answers are stored as you give them" in state["busy"]
        assert not any(state["disabled"]), "the class buttons stay enabled"
        page.label(2, typed)
        page.at(3)
        page.saved()
        assert page.stored() == typed and len(typed) == 2
    finally:
        rd.unlock()

    state = page.until(lambda s: s["busy"] is None, "the banner gone once the run ended", timeout=10)
    page.label(3, typed)
    page.at(4)
    page.saved()
    assert page.stored() == typed


@pytest.mark.slow
def test_continue_trains_the_next_round_from_the_page_and_shows_its_batch_with_suggestions(
        browser, serve, longer_run, tmp_path, truth):
    run, server, page, typed = labeled_batch_of_a_copy(browser, serve, longer_run, tmp_path, truth)
    state = page.until(lambda s: s["view"] == "done" and s["continue_shown"], "the done view with #continue")
    assert state["done_title"] == f"All {page.n} images are answered"
    page.saved()
    assert page.stored() == typed

    page.press(ENTER)  # train the next round
    logs: list[str] = []

    def next_batch(s: dict) -> bool:
        if s["log"]:
            logs.append(s["log"])
        return s["view"] == "single" and "rounds/r00" in s["folder"]

    state = page.until(lambda s: s["log"] is not None and s["done_title"].startswith("Training the next round"),
                       "'Training the next round…' with the log")
    state = page.until(next_batch, "the next batch (rounds/r00)", timeout=240)
    assert any("round 0 train" in log for log in logs), f"the training log was not shown: {logs}"
    # the batch can show up while the run's process is still exiting: the banner goes at the next poll
    state = page.until(lambda s: s["busy"] is None, "the banner gone once the run ended", timeout=30)
    assert state["error"] is None

    batch = get_json(server.url + "api/batch")
    assert batch["round"] == 0 and batch["folder"].endswith("r00") and batch["answers"] == {}
    page.round, page.items, page.n = batch["round"], batch["items"], len(batch["items"])
    assert page.n == 9 and all(it["suggestion"] in CLASSES for it in page.items)
    state = page.at(1)
    first = page.items[0]
    assert state["suggestion"].startswith(f"Model suggests {first['suggestion']} (")
    assert state["progress"] == progress(0, page.n)
    page.press(ENTER)  # accept the suggestion
    page.at(2)
    page.saved()
    assert page.stored(0) == {first["index"]: CLASSES.index(first["suggestion"])}
    assert page.stored(-1) == typed


IMAGE_JS = """
const i = document.getElementById("image"), r = i.getBoundingClientRect();
const s = document.getElementById("stage").getBoundingClientRect();
return {natural: [i.naturalWidth, i.naturalHeight], size: [r.width, r.height], stage: [s.width, s.height],
        classes: [...i.classList], rendering: getComputedStyle(i).imageRendering};
"""


def assert_scaled_up(page: Page, what: str) -> int:
    """The image on screen is its natural size times a whole factor >= 4, inside the stage, pixelated."""
    im = page.d.execute_script(IMAGE_JS)  # fit() runs before data-shown is set: the size is final
    (nw, nh), (w, h), (sw, sh) = im["natural"], im["size"], im["stage"]
    assert (nw, nh) == (16, 16), im
    factor = w / nw
    assert factor == int(factor) and factor >= 4 and h == nh * factor, f"{what}: not a whole factor >= 4: {im}"
    assert w <= sw and h <= sh, f"{what}: larger than the stage: {im}"
    assert "pixelated" in im["classes"] and im["rendering"] == "pixelated", f"{what}: smoothed: {im}"
    return int(factor)


@pytest.mark.slow  # 5 s; the default run keeps the acceptance walk above
def test_small_images_are_scaled_up_by_a_whole_factor_without_smoothing(browser, serve, run, truth):
    server = serve(run)
    page = Page(browser, server.url, run, truth)
    page.at(1)
    big = assert_scaled_up(page, "at 1200x800")
    page.press(RIGHT)
    page.at(2)
    assert assert_scaled_up(page, "the next image") == big
    size = browser.get_window_size()
    try:
        browser.set_window_size(900, 560)  # the single view fits the image again on a resize
        page.until(lambda s: page.d.execute_script(IMAGE_JS)["size"][0] < 16 * big, "the image fitted to a smaller "
                   "window")
        assert assert_scaled_up(page, "after a resize") < big
    finally:
        browser.set_window_size(size["width"], size["height"])


@pytest.mark.slow  # 4 s; the default run keeps the acceptance walk above
def test_an_image_keeps_a_whole_factor_after_a_resize_while_the_grid_was_shown(browser, serve, run, truth):
    """The window is made smaller while the grid is shown; back in the single view, the next image (of the
    same size as the last) must be fitted to the new stage, not keep the old size squeezed by max-height."""
    server = serve(run)
    page = Page(browser, server.url, run, truth)
    page.at(1)
    assert_scaled_up(page, "at 1200x800")
    size = browser.get_window_size()
    try:
        page.press("g")
        page.until(lambda s: s["view"] == "gridview", "the grid view")
        browser.set_window_size(900, 560)
        page.until(lambda s: page.d.execute_script("return window.innerWidth") < size["width"], "a smaller window")
        page.press("g")
        page.at(1)
        page.press(RIGHT)
        page.at(2)
        assert_scaled_up(page, "after a resize while the grid was shown, the next image")
    finally:
        browser.set_window_size(size["width"], size["height"])


@pytest.mark.slow  # three rounds, a server that runs the loop, a browser
def test_three_rounds_labeled_in_the_browser_while_the_run_pretrains_and_trains_behind(
        browser, serve, photos, tmp_path):
    """The one command: 'ssal label serve RECIPE' starts the run; a person labels the first batch (with
    the audit images) while it pretrains, then each batch by keyboard, pressing Enter on the done view;
    the page shows each round's audit accuracy and the stop signal. pool.json holds exactly the typed
    answers, the audit images are never trained on nor selected, and the signal is recorded."""
    folder, truth = photos
    recipe = folder_recipe(tmp_path, folder, "three", pretrain={"method": "simclr", "epochs": 2, "batch_size": 16,
                                                                "view_size": 16, "eval_every": 0},
                           train={"steps": 60},
                           active={"initial": 6, "budget": 4, "rounds": 3, "audit": 6, "initial_strategy": "random",
                                   "stop_set": 30, "stop_window": 2})
    run = tmp_path / "runs" / "three"
    server = serve(recipe, cont=True)
    typed: dict[int, int] = {}
    headers = []
    for r in (-1, 0, 1):
        page = Page(browser, server.url, run, truth)
        assert page.round == r, (page.round, r)
        for k in range(1, page.n + 1):
            page.label(k, typed)
            after_key(page, k)
        page.until(lambda s: s["view"] == "done", "the done view")
        page.saved()

        def next_batch(s: dict, r=r, page=page) -> bool:
            if s["continue_shown"]:  # shown only while no run works: the first batch, if the run ended first
                page.press(ENTER)  # train the next round
            return get_json(server.url + "api/batch")["round"] == r + 1

        page.until(next_batch, f"the batch after {r}", timeout=240)
        headers.append(get_json(server.url + "api/batch")["accuracy"])
    pool = json.loads((run / "pool.json").read_text())
    assert {i: y for i, y, _ in pool["labeled"]} == typed  # exactly the typed answers, audit ones included
    audit = set(json.loads((run / "rounds" / "initial" / "selected.json").read_text())["audit"])
    assert len(audit) == 6 and audit <= set(typed)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 1, 2]
    for row in rows:  # what each round trained on: its labels less the audit set (and nothing skipped here)
        trained = {i for i, _, acquired in pool["labeled"] if acquired <= row["round"]} - audit
        assert row["n_labeled"] == len(trained) and row["audit_n"] == 6
    for r in (0, 1, 2):
        picked = set(json.loads((run / "rounds" / f"r{r:02d}" / "selected.json").read_text())["indices"])
        assert not picked & audit
    assert all("stable_kappa" in row for row in rows[1:]) and "stable_kappa_mean" in rows[2]
    assert headers[0].startswith("round 0: audit acc ") and "predictions " in headers[1], headers


@pytest.mark.slow  # a round that trains for seconds behind the page
def test_while_the_next_round_trains_the_page_offers_the_images_chosen_ahead(browser, serve, photos, tmp_path):
    """active.lookahead: once the batch is taken and the next round trains, the page shows the images chosen
    ahead; those answered by keyboard open the next batch already answered."""
    folder, truth = photos
    recipe = folder_recipe(tmp_path, folder, "ahead", train={"steps": 800},
                           active={"initial": 6, "budget": 4, "rounds": 1, "lookahead": 4,
                                   "initial_strategy": "random"})
    proc = ssal("run", str(recipe))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "ahead"
    server = serve(run, cont=True)
    page = Page(browser, server.url, run, truth)
    typed: dict[int, int] = {}
    for k in range(1, page.n + 1):
        page.label(k, typed)
        after_key(page, k)
    page.until(lambda s: s["continue_shown"], "the done view with #continue")
    page.saved()
    page.press(ENTER)  # train round 0: the batch is taken, the images chosen ahead open
    page.until(lambda s: "chosen ahead" in s["folder"] and s["view"] == "single", "the images chosen ahead")
    batch = get_json(server.url + "api/batch")
    assert batch["ahead"] is True and batch["round"] == -1
    record = json.loads((run / "rounds" / "initial" / "selected.json").read_text())
    assert [it["index"] for it in batch["items"]] == record["ahead"]
    page.round, page.items, page.n = batch["round"], batch["items"], len(batch["items"])
    ahead_typed: dict[int, int] = {}
    for k in (1, 2):
        page.label(k, ahead_typed)
    page.at(3)
    page.saved()
    assert RunDir(run).read_ahead(-1)[0] == ahead_typed
    state = page.until(lambda s: "rounds/r00" in s["folder"] and "chosen ahead" not in s["folder"],
                       "the next batch (rounds/r00)", timeout=240)
    nxt = get_json(server.url + "api/batch")
    assert nxt["round"] == 0 and [it["index"] for it in nxt["items"]][:2] == record["ahead"][:2]
    assert {int(i): CLASSES.index(y) for i, y in nxt["answers"].items()} == ahead_typed
    assert state["progress"] == progress(2, len(nxt["items"]))
