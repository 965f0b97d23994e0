"""The `lstmlm serve` page in headless Chromium (Debian's /usr/bin/chromium, driven by Python Playwright).

It types into the page, sees the suggestions the API gives, accepts the first with Tab, generates and scores,
and saves a screenshot to test-artifacts/serve-page.png (and docs/images/serve-page.png when
LSTMLM_UPDATE_DOCS_IMAGES=1). Every request the page makes must go to the server: the page works offline.

    apt-get install -y chromium chromium-driver && pip install -e '.[serve,test]'
    python -m pytest tests/test_browser.py -m browser
"""

import contextlib
import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
ARTIFACT = ROOT / "test-artifacts" / "serve-page.png"
DOCS_IMAGE = ROOT / "docs" / "images" / "serve-page.png"
# Debian's Chromium, not Playwright's download (which cannot be fetched here); no GPU, no background traffic.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.browser
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found (apt-get install -y chromium chromium-driver)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")

import httpx  # noqa: E402


@pytest.fixture
def page(server_url):
    """A page at the server's /, with every request recorded; requests elsewhere are blocked and recorded."""
    with open_page(server_url) as opened:
        yield opened


@contextlib.contextmanager
def open_page(server_url):
    """Headless Chromium at `server_url`/; requests to anywhere else are blocked and recorded in page.elsewhere."""
    server = urlsplit(server_url).netloc
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 720})
            page.elsewhere = []  # URLs the page tried to fetch from anywhere but the server

            def route(request_route):
                if urlsplit(request_route.request.url).netloc == server:
                    request_route.continue_()
                else:
                    page.elsewhere.append(request_route.request.url)
                    request_route.abort()

            page.route("**/*", route)
            page.goto(server_url + "/")
            yield page
        finally:
            browser.close()


@pytest.fixture
def api(server_url):
    """POST to the server: the expected answers go through the server's lock, as the page's requests do
    (calling the model directly here could run at the same time as a request the page still has in flight)."""
    with httpx.Client(base_url=server_url, timeout=30) as client:
        yield lambda path, body: client.post(path, json=body).raise_for_status().json()


def wait_for_suggestions(page, words):
    """Wait until the page shows exactly `words` (typing sends several requests; the last one wins)."""
    page.wait_for_function("""expected => [...document.querySelectorAll("#suggestions li button")]
                                  .map(button => button.dataset.word).join("|") === expected""",
                           arg="|".join(words), timeout=10_000)


def test_type_see_suggestions_tab_accepts_generate_and_score(page, api, tiny_run, loaded_tiny):
    # the model name from /health is shown (the session's tiny run on the toy grammar)
    shown = f"{tiny_run.name} · {len(loaded_tiny.vocabulary)} words"
    sync_api.expect(page.locator("#model")).to_contain_text(shown)

    # type: the suggestions are the API's top words for the text, most likely first
    box = page.locator("#text")
    box.click()
    box.type("my friend sees ", delay=20)
    expected = [w["word"] for w in api("/v1/next", {"text": "my friend sees ", "top_k": 8})["predictions"]]
    buttons = page.locator("#suggestions li button")
    wait_for_suggestions(page, expected)
    sync_api.expect(page.locator("#suggestions li.active button")).to_have_attribute("data-word", expected[0])

    # Tab accepts the highlighted (first) suggestion: the word and a space are appended
    accepted = next(word for word in expected if word != "<eos>")
    if expected[0] == "<eos>":  # move the highlight past the end-of-sentence suggestion
        box.press("Alt+ArrowDown")
    box.press("Tab")
    sync_api.expect(box).to_have_value(f"my friend sees {accepted} ")
    assert page.evaluate("document.activeElement.id") == "text"  # Tab did not move the focus

    # a half-typed word filters the suggestions to words that start with it; clicking one accepts it
    box.type("t", delay=20)
    after = api("/v1/next", {"text": f"my friend sees {accepted} ", "top_k": 100})["predictions"]
    starting_with_t = [w["word"] for w in after if w["word"].startswith("t")][:8]
    wait_for_suggestions(page, starting_with_t)
    buttons.first.click()
    prompt = f"my friend sees {accepted} {starting_with_t[0]} "
    sync_api.expect(box).to_have_value(prompt)

    # continue: the page's settings (temperature 0.8, top-k 40) with seed 3 give the API's words
    page.fill("#seed", "3")
    sync_api.expect(page.locator("#num-words")).to_have_value("30")  # /health's default_num_words
    page.fill("#num-words", "6")
    page.click("#continue")
    sync_api.expect(page.locator("#status")).to_have_text("generated 6 words")
    generated = api("/v1/generate", {"prompt": prompt, "num_words": 6, "temperature": 0.8, "top_k": 40,
                                     "seed": 3})["text"]
    value = box.input_value()
    assert value == prompt + generated + ("" if generated[-1:].isspace() else " ")
    # the suggestions for the longer text arrive after the words; their refresh leaves the status alone
    wait_for_suggestions(page, [w["word"] for w in api("/v1/next", {"text": value, "top_k": 8})["predictions"]])
    sync_api.expect(page.locator("#status")).to_have_text("generated 6 words")

    # score: one coloured word per scored token, and the summary's perplexity is the API's
    page.click("#score")
    scored = page.locator("#scored span")
    sync_api.expect(page.locator("#score-view")).to_be_visible()
    result = api("/v1/score", {"text": value})
    sync_api.expect(scored).to_have_count(result["tokens"])
    assert page.locator("#score-summary").inner_text().endswith(f"perplexity {result['perplexity']:.2f}")
    colours = {scored.nth(i).evaluate("element => element.style.background") for i in range(result["tokens"])}
    assert len(colours) > 1  # words of different surprisal get different colours

    assert page.elsewhere == []  # offline: nothing but the server was asked for anything

    # leave the suggestions of the current text visible in the screenshot
    box.press("End")
    box.type(" ", delay=20)
    text = box.input_value()
    wait_for_suggestions(page, [w["word"] for w in api("/v1/next", {"text": text, "top_k": 8})["predictions"]])
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACT), full_page=True)
    assert ARTIFACT.stat().st_size > 10_000
    if os.environ.get("LSTMLM_UPDATE_DOCS_IMAGES") == "1":
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ARTIFACT, DOCS_IMAGE)


def test_errors_are_shown_not_thrown(page):
    page.fill("#num-words", "5000")  # over the server's limit: the page shows the API's one-line error
    page.click("#continue")
    sync_api.expect(page.locator("#status")).to_contain_text("max_tokens")
    sync_api.expect(page.locator("#status")).to_have_class("status error")


def test_unknown_words_are_named_until_the_text_has_none(page, api):
    box = page.locator("#text")
    box.click()
    box.type("my zebra ", delay=20)
    assert api("/v1/next", {"text": "my zebra ", "top_k": 8})["unknown_words"] == ["zebra"]
    sync_api.expect(page.locator("#status")).to_have_text("not in the vocabulary: zebra")
    box.fill("my friend ")  # fill fires one input event: the suggestions refresh and clear their own message
    wait_for_suggestions(page, [w["word"] for w in api("/v1/next", {"text": "my friend ", "top_k": 8})["predictions"]])
    sync_api.expect(page.locator("#status")).to_have_text("")


def test_continue_shows_the_words_as_they_are_computed(tiny_run, loaded_tiny):
    """Continue streams /v1/completions: with each word slowed to 80 ms, the text box grows word by word (seen
    by a MutationObserver on the status line, which counts the pieces), and ends as the API's seeded text."""
    from helpers import serving

    from lstmlm.inference.language_model import load
    from lstmlm.serving.server import create_app

    slow = load(tiny_run)
    fast = slow._next_logits
    slow._next_logits = lambda states: (time.sleep(0.08), fast(states))[1]
    with serving(create_app(slow)) as url, open_page(url) as page:
        sync_api.expect(page.locator("#model")).to_contain_text(tiny_run.name)
        page.fill("#text", "the cat ")
        page.fill("#num-words", "10")
        page.fill("#seed", "5")
        page.evaluate("""() => {
            window.seen = [];
            new MutationObserver(() => window.seen.push(document.getElementById("text").value))
                .observe(document.getElementById("status"), {childList: true, characterData: true, subtree: true});
        }""")
        page.click("#continue")
        sync_api.expect(page.locator("#status")).to_have_text("generated 10 words", timeout=20_000)
        seen = page.evaluate("window.seen")
        value = page.locator("#text").input_value()
    expected = loaded_tiny.generate("the cat ", 10, temperature=0.8, top_k=40, seed=5)["text"]
    assert value == "the cat " + expected + ("" if expected[-1:].isspace() else " ")
    growing = [text for text in dict.fromkeys(seen) if text.startswith("the cat ") and text != "the cat "]
    assert len(growing) >= 5, seen  # many intermediate texts: the words arrived one by one, not all at the end
    assert all(value.startswith(text.rstrip(" ")) for text in growing)
