"""The demo in a real browser: headless Chromium (Debian's package, which .ci/run installs)
driven by Playwright loads the page, uploads an image, asks, and reads the answer."""

import shutil

import pytest
from conftest import DEMO_PHRASES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_a_person_uploads_an_image_asks_and_reads_the_answer(demo_server, demo_runs, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    name, _, answer = DEMO_PHRASES["image"]
    image = demo_runs[1] / "demo-examples" / name
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(demo_server)
            page.set_input_files("#image-media input[type=file]", str(image))
            expect(page.locator("#image-media img").first).to_be_visible(timeout=30_000)
            page.locator("#image-question textarea").fill("what is it?")
            page.click("#image-run")
            expect(page.locator("#image-answer textarea")).to_have_value(answer, timeout=60_000)
            expect(page.locator("#image-who")).to_contain_text("image-vqa answered in")
            page.screenshot(path=tmp_path / "demo.png", full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "demo.png").stat().st_size > 10_000
