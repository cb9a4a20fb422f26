"""The demo in a real browser: headless Chromium (Debian's package, which .ci/run installs)
driven by Playwright. A person uploads a broken file and reads the message the page shows,
then uploads an image, asks, and reads the answer; another records with the microphone
(Chromium's fake capture device, a beeping tone) and gets a description; a third searches the
pictures of a retrieval model's gallery by text and sees their thumbnails."""

import shutil

import pytest
from conftest import DEMO_PHRASES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)"),
]
FAKE_MICROPHONE = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        args = ["--no-sandbox", *FAKE_MICROPHONE]  # no sandbox: CI runs as root
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, demo_server):
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, permissions=["microphone"]
    )
    page = context.new_page()
    page.goto(demo_server)
    yield page
    context.close()


def test_a_person_uploads_an_image_asks_and_reads_the_answer(page, demo_runs, tmp_path):
    from playwright.sync_api import expect

    name, _, answer = DEMO_PHRASES["image"]
    image = demo_runs[1] / "demo-examples" / name
    broken = tmp_path / "broken.png"
    broken.write_bytes(image.read_bytes()[:16] + bytes(range(256)) * 4)

    page.set_input_files("#image-media input[type=file]", str(broken))
    page.locator("#image-question textarea").fill("what is it?")
    page.click("#image-run")
    message = "broken.png could not be read as an image"
    expect(page.get_by_text(message).first).to_be_visible(timeout=30_000)

    page.locator("#image-media button[aria-label='Remove Image']").first.click()
    page.set_input_files("#image-media input[type=file]", str(image))
    expect(page.locator("#image-media img").first).to_be_visible(timeout=30_000)
    page.click("#image-run")
    expect(page.locator("#image-answer textarea")).to_have_value(answer, timeout=60_000)
    expect(page.locator("#image-who")).to_contain_text("image-vqa answered in")
    page.screenshot(path=tmp_path / "demo.png", full_page=True)
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_a_person_records_a_sound_and_gets_a_description(page, tmp_path):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Sound").click()
    page.get_by_label("Record audio").first.click()
    page.locator("#audio-media button.record-button").click()
    page.wait_for_timeout(2000)
    page.locator("#audio-media button.stop-button").first.click()
    expect(page.locator("#audio-media audio, #audio-media a[download]").first).to_be_attached(
        timeout=30_000
    )
    page.get_by_role("tabpanel").get_by_role("radio", name="Describe it").click()
    page.click("#audio-run")
    expect(page.locator("#audio-who")).to_contain_text("audio-caption answered in", timeout=60_000)
    assert page.locator("#audio-answer textarea").input_value().strip()
    page.screenshot(path=tmp_path / "microphone.png", full_page=True)


def test_a_person_searches_pictures_by_text_and_sees_thumbnails(page, tmp_path):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Search").click()
    page.locator("#search-query textarea").fill("a green triangle")
    page.click("#search-run")
    expect(page.locator("#search-who")).to_contain_text(
        "image-retrieval searched 4 image files", timeout=60_000
    )
    thumbnails = page.locator("#search-gallery img")
    expect(thumbnails).to_have_count(4, timeout=30_000)
    assert thumbnails.first.get_attribute("src").endswith("green.png")  # the best match first
    expect(page.locator("#search-gallery")).to_contain_text("1. a green triangle")
    expect(page.locator("#search-table")).to_contain_text("green.png")
    page.screenshot(path=tmp_path / "search.png", full_page=True)
    assert (tmp_path / "search.png").stat().st_size > 10_000
