"""Rewrite the README's screenshot of the interactive app (docs/app.png): serve the app on localhost, make candidates
in headless Chromium, pick one, animate it, and save the top of the page as a small palette PNG.

    python scripts/app_screenshot.py                          # the toy-world model (debug=tiny when not installed)
    python scripts/app_screenshot.py --steps 25 --out /tmp/app.png checkpoint=... motion_module=...

Needs Gradio, Playwright's Python client and a system Chromium (``apt-get install chromium``; no browser downloads).
"""

from __future__ import annotations

import argparse
import io
import socket
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python scripts/app_screenshot.py`

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/app.png")
    parser.add_argument("--prompt", default="a red circle moving right on a black background")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)

    from PIL import Image

    from animatezero import toyworld
    from experiments import app

    if not overrides and not toyworld.available():
        overrides = ["debug=tiny"]
    cfg = app.compose_config(overrides)
    with tempfile.TemporaryDirectory(prefix="app_screenshot_") as outputs:
        shot = take(app.Session.load(cfg, outputs), args)
    shot = shot.crop((0, 0, shot.width, min(shot.height, 1000)))
    shot = shot.resize((shot.width * 3 // 4, shot.height * 3 // 4), Image.LANCZOS)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shot.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"{out}: {shot.width}x{shot.height}, {out.stat().st_size / 1024:.0f} KB")
    return out


def take(session, args: argparse.Namespace):
    """Drive the app in headless Chromium (make candidates, pick one, animate) and return a full-page screenshot."""
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    from experiments import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo, url = app.launch(session, "127.0.0.1", port, block=False)
    try:
        with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=args.chromium,
                args=ARGS,
                headless=True,
                viewport={"width": 1280, "height": 1000},
            )
            page = context.new_page()
            page.set_default_timeout(600_000)
            page.goto(url)
            page.locator("#prompt textarea").fill(args.prompt)
            for elem_id, value in (("count", args.candidates), ("steps", args.steps), ("frames", args.frames)):
                page.locator(f"#{elem_id} input").first.fill(str(value))
            page.locator("#make").click()
            expect(page.locator("#status")).to_contain_text("candidates", timeout=600_000)
            page.locator("#candidates img").nth(min(1, args.candidates - 1)).click()
            expect(page.locator("#status")).to_contain_text("Picked", timeout=60_000)
            page.locator("#animate").click()
            expect(page.locator("#status")).to_contain_text("Done", timeout=600_000)
            page.wait_for_function("document.querySelector('#video video').readyState >= 2")
            page.evaluate("window.scrollTo(0, 0)")
            shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
            context.close()
    finally:
        demo.close()
    return shot


if __name__ == "__main__":
    main()
