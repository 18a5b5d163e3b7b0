"""The interactive app in a real browser: headless Chromium (Debian's ``chromium`` package) driven by Playwright's
Python client against the app served on localhost. Candidates are made, one is picked and animated, the clip plays
in the page, and the first frame of the downloaded frames equals the picked candidate's pixels; bad input shows a
message in the page and the app keeps serving. Screenshots go to ``tests/artifacts/`` (or
``$ANIMATEZERO_TEST_ARTIFACTS``); the README's screenshot is made by scripts/app_screenshot.py.

Skipped, with the reason, where Gradio, Playwright or the browser is not installed (``.ci/run`` installs them; never
``playwright install``: the browser is the system's)."""

import io
import os
import re
import shutil
import socket
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("ANIMATEZERO_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(os.environ.get("ANIMATEZERO_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
# a tiny generation: the page's fields are set to these whatever the model's defaults
STEPS, SIZE, FRAMES, CANDIDATES = 2, 64, 4, 3
TIMEOUT_MS = 60_000

pytest.importorskip("gradio", reason='the app needs Gradio: pip install -e ".[app]" (or ".[dev]")')
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need Playwright: pip install playwright")
if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"browser tests need Chromium at {CHROMIUM}: apt-get install -y chromium (or set ANIMATEZERO_CHROMIUM)",
        allow_module_level=True,
    )

from animatezero import toyworld  # noqa: E402
from experiments import app  # noqa: E402


def model_overrides(cache: Path) -> list[str]:
    """The app's model: the toy world shipped with the package when present, else tiny random weights."""
    model = [] if toyworld.available() else ["debug=tiny"]
    return [*model, f"paths.cache_dir={cache}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a free localhost port, served from a background thread of this process."""
    root = tmp_path_factory.mktemp("app_browser")
    cfg = app.compose_config([*model_overrides(root / "cache"), f"paths.output_root={root / 'out'}"])
    session = app.Session.load(cfg)
    demo, url = app.launch(session, "127.0.0.1", free_port(), block=False)
    yield url, session
    demo.close()


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium_profile")),  # a fresh user-data-dir
            executable_path=CHROMIUM,
            args=ARGS,
            headless=True,
            viewport={"width": 1280, "height": 1000},
        )
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server[0])
        yield page
        context.close()


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def set_number(page, elem_id: str, value) -> None:
    page.locator(f"#{elem_id} input").first.fill(str(value))


def fetch(page, url: str) -> bytes:
    response = page.request.get(url)
    assert response.ok, f"{url}: HTTP {response.status}"
    return response.body()


def status_text(page, contains: str) -> str:
    sync_api.expect(page.locator("#status")).to_contain_text(contains, timeout=TIMEOUT_MS)
    return page.locator("#status").inner_text()


def make_candidates(page, prompt: str, seed: int) -> None:
    page.get_by_role("tab", name="Text to image").click()
    page.locator("#prompt textarea").fill(prompt)
    set_number(page, "seed", seed)
    set_number(page, "count", CANDIDATES)
    for elem_id, value in (("steps", STEPS), ("height", SIZE), ("width", SIZE), ("frames", FRAMES)):
        set_number(page, elem_id, value)
    page.locator("#make").click()
    status_text(page, f"{CANDIDATES} candidates")


def test_pick_a_candidate_and_the_clip_starts_from_exactly_it(page, server):
    make_candidates(page, "a cat, blinking", seed=11)
    thumbs = page.locator("#candidates img")
    sync_api.expect(thumbs).to_have_count(CANDIDATES)
    thumbs.nth(1).click()
    status_text(page, "Picked candidate 2 (seed 12)")
    picked_png = fetch(page, thumbs.nth(1).get_attribute("src"))

    page.locator("#animate").click()
    status_text(page, "frame 0 is the picked image")
    video = page.locator("#video video")
    sync_api.expect(video).to_have_attribute("src", re.compile(r"video\.mp4$"))
    page.wait_for_function("document.querySelector('#video video').readyState >= 2")  # decoded: it plays
    assert page.evaluate("document.querySelector('#video video').duration") > 0
    shot(page, "app_animated")

    links = {a.get_attribute("download"): a.get_attribute("href") for a in page.locator("#downloads a").all()}
    assert {"video.mp4", "video.gif", "frames.zip", "run.json"} <= set(links)
    with zipfile.ZipFile(io.BytesIO(fetch(page, links["frames.zip"]))) as z:
        assert len(z.namelist()) == FRAMES
        first = np.asarray(Image.open(z.open("0000.png")).convert("RGB")).astype(int)
    picked = np.asarray(Image.open(io.BytesIO(picked_png)).convert("RGB")).astype(int)
    assert first.shape == picked.shape == (SIZE, SIZE, 3)
    assert np.abs(first - picked).max() <= 1  # lossless PNGs: the same pixels up to the last bit of rounding
    gif = Image.open(io.BytesIO(fetch(page, links["video.gif"])))
    assert gif.n_frames == FRAMES
    run = fetch(page, links["run.json"]).decode()
    assert '"mode": "animatezero"' in run and '"video": 12' in run
    sync_api.expect(page.locator("#history")).to_contain_text("animatezero")
    shown = page.locator("#status").inner_text() + page.locator("#history").inner_text()
    assert str(server[1].root / "app") in shown and "gradio" not in shown  # the run folder, not Gradio's copies

    page.locator("#continue").click()  # a longer clip from the last frame, listed as a second run
    status_text(page, f"{2 * FRAMES - 1} frames, animatezero+continue")
    sync_api.expect(page.locator("#history")).to_contain_text("animatezero+continue")


def header_only_png(path: Path, width: int, height: int) -> Path:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IEND", b""))  # a header claiming a size, no pixels
    return path


def uploaded(name: str) -> re.Pattern:
    """The upload box's file row: Gradio renders the stem and the extension in separate elements, and whether
    whitespace falls between them depends on the layout (seen: "huge .png"), so match either."""
    stem, ext = name.rsplit(".", 1)
    return re.compile(rf"{re.escape(stem)}\s*\.{re.escape(ext)}")


def test_bad_input_shows_a_message_and_the_app_keeps_serving(page, server, tmp_path):
    page.get_by_role("tab", name="Real image").click()
    upload = page.locator("#upload input[type=file]")
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    upload.set_input_files(str(bad))
    sync_api.expect(page.locator("#upload")).to_contain_text(uploaded("notes.png"))
    page.locator("#invert").click()
    status_text(page, "cannot read image 'notes.png'")
    shot(page, "app_bad_upload")

    page.locator("#upload button[aria-label='Clear']").first.click()
    upload.set_input_files(str(header_only_png(tmp_path / "huge.png", 9000, 8000)))
    sync_api.expect(page.locator("#upload")).to_contain_text(uploaded("huge.png"))
    page.locator("#invert").click()
    status_text(page, "'huge.png' is 9000x8000 = 72 megapixels, over the 64 MP limit")
    assert "gradio" not in page.locator("#status").inner_text()  # the upload's name, not the server's temporary path

    page.get_by_role("tab", name="Text to image").click()
    page.locator("#prompt textarea").fill("a cat " * 50)
    page.locator("#make").click()
    status_text(page, "CLIP reads at most 75")
    set_number(page, "height", 70)
    page.locator("#prompt textarea").fill("a dog")
    page.locator("#make").click()
    status_text(page, "height must be a multiple of 8")
    set_number(page, "height", SIZE)
    page.locator("#loras textarea").fill("missing.safetensors:0.8")
    page.locator("#make").click()
    status_text(page, "lora[0]=missing.safetensors does not exist")
    page.locator("#loras textarea").fill("")
    assert "Traceback" not in page.content()

    make_candidates(page, "a dog, running", seed=3)  # still serving
    page.locator("#candidates img").nth(0).click()
    status_text(page, "Picked candidate 1 (seed 3)")


def test_real_image_is_inverted_and_its_psnr_shown(page, server, tmp_path):
    photo = tmp_path / "photo.png"
    gradient = np.linspace(0, 255, 80 * 96 * 3).reshape(80, 96, 3).astype(np.uint8)
    Image.fromarray(gradient).save(photo)
    page.get_by_role("tab", name="Real image").click()
    clear = page.locator("#upload button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.locator("#upload input[type=file]").set_input_files(str(photo))
    sync_api.expect(page.locator("#upload")).to_contain_text(uploaded("photo.png"))
    page.locator("#invert").click()
    text = status_text(page, "reconstruction PSNR")
    shown = re.search(r"reconstruction PSNR (\d+\.\d\d) dB", text)  # the value itself: test_applications.py
    assert shown and 0 < float(shown.group(1)) <= 100, text
    page.locator("#animate").click()
    status_text(page, "frame 0 is the picked image")
    shutil.copy(shot(page, "app_real_image"), ARTIFACTS / "app_last.png")


def test_stop_ends_the_running_job_between_steps(page, server):
    """Many candidates of many steps (within the budget): Stop ends the job after a step, long before the last."""
    page.get_by_role("tab", name="Text to image").click()
    page.locator("#prompt textarea").fill("a red circle moving right on a black background")
    set_number(page, "count", 8)
    set_number(page, "steps", 200)
    for elem_id in ("height", "width"):
        set_number(page, elem_id, SIZE)
    page.locator("#make").click()
    progress = page.get_by_text(re.compile(r"\d+/1\.6k step")).first  # the progress bar moves: the job runs
    sync_api.expect(progress).to_be_visible(timeout=TIMEOUT_MS)
    page.locator("#stop").click()
    text = status_text(page, "Stopped: stopped after")
    done = int(re.search(r"after (\d+) of 1600 steps", text).group(1))
    assert 1 <= done < 1600
    set_number(page, "steps", STEPS)  # and the app goes on serving
    make_candidates(page, "a dog, running", seed=4)
