"""The playground at /, in a real headless Chromium (Debian's, through its chromedriver), against
the real server. RILLET_SCREENSHOT=PATH also saves a screenshot of a conversation there (the
README's docs/playground.png)."""
from __future__ import annotations

import os
import re
import time
from importlib import resources

from fastapi.testclient import TestClient
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from rillet.api.app import create_app
from tests.api.helpers import access_lines
from tests.api.stub_app import StubEngine, stub_app
from tests.conftest import MODEL_NAME
from tests.ui.conftest import API_KEY

PLAYGROUND_FILES = ("index.html", "playground.js", "markdown.js", "playground.css")
# Counts how often the last answer's text was shown while it streamed.
WATCH_RENDERS = """
window.renders = new Set();
new MutationObserver(() => {
  const answers = document.querySelectorAll('.turn.assistant .content');
  const last = answers[answers.length - 1];
  if (last && last.textContent) window.renders.add(last.textContent);
}).observe(document.getElementById('transcript'), {subtree: true, childList: true, characterData: true});
"""


def wait_for(browser, condition, timeout: float = 120, message: str = ""):
    try:
        return WebDriverWait(browser, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        notice = browser.find_element(By.ID, "notice")
        raise AssertionError(f"{message} (the page's notice: {notice.text!r})") from None


def open_playground(browser, base_url: str, expect_models: bool = True) -> None:
    browser.get(f"{base_url}/")
    assert browser.title == "rillet playground"
    if expect_models:
        wait_for(browser, lambda b: b.execute_script("return document.getElementById('model').value") == MODEL_NAME,
                 30, "the model list did not load")


def set_field(browser, field_id: str, value: str) -> None:
    field = browser.find_element(By.ID, field_id)
    field.clear()
    field.send_keys(value)


def send(browser, text: str) -> dict[str, str]:
    """Sends `text` with Enter, waits for the answer to end, and returns its figures."""
    answers = len(browser.find_elements(By.CSS_SELECTOR, ".turn.assistant"))
    browser.find_element(By.ID, "input").send_keys(text, Keys.ENTER)
    wait_for(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, ".turn.assistant")) > answers
             and b.find_elements(By.CSS_SELECTOR, ".turn.assistant:last-child .stats .stat"), 120,
             "the answer did not end")
    return {figure.get_attribute("data-stat"): figure.find_element(By.CLASS_NAME, "value").text
            for figure in browser.find_elements(By.CSS_SELECTOR, ".turn.assistant:last-child .stats .stat")}


def last_answer_text(browser) -> str:
    return browser.execute_script(
        "const a = document.querySelectorAll('.turn.assistant .content'); return a[a.length - 1].textContent")


def chat_completions(server) -> list[dict]:
    return [entry for entry in access_lines(server) if entry["path"] == "/v1/chat/completions"]


def logged_after(server, seen: int, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while len(entries := chat_completions(server)) <= seen:
        assert time.monotonic() < deadline, "the completion was not logged"
        time.sleep(0.05)
    return entries[seen]


def test_the_page_and_its_files_are_served_with_a_strict_policy(http):
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "connect-src 'self'" in policy
    for name in PLAYGROUND_FILES[1:]:
        asset = http.get(f"/playground/{name}")
        assert asset.status_code == 200 and asset.headers["x-content-type-options"] == "nosniff"
    missing = http.get("/playground/../app.py")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_the_page_writes_no_html_and_fetches_nothing_from_elsewhere():
    files = resources.files("rillet.api.playground")
    for name in PLAYGROUND_FILES:
        text = (files / name).read_text()
        assert not re.search(r"https?://", text), name
        if name.endswith(".js"):
            code = re.sub(r"(^|\s)//.*$", "", text, flags=re.MULTILINE)  # without the comments
            for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(",
                         "setAttribute", "href"):
                assert sink not in code, f"{name} uses {sink}"


def test_a_message_streams_and_shows_its_figures(server, browser):
    open_playground(browser, server.base_url)
    set_field(browser, "system", "You are a helpful assistant.")
    set_field(browser, "temperature", "0")
    set_field(browser, "max-tokens", "160")
    browser.execute_script(WATCH_RENDERS)
    seen = len(chat_completions(server))
    figures = send(browser, "Show me how to reverse a string in Python.")
    logged = logged_after(server, seen)

    assert int(figures["prompt_tokens"]) == logged["prompt_tokens"] > 0
    assert int(figures["completion_tokens"]) == logged["completion_tokens"] > 1
    assert float(figures["ttft"]) > 0 and float(figures["tokens_per_second"]) > 0
    assert figures["finish_reason"] == logged["finish_reason"]
    # Shown piece by piece as it streamed, not at once at the end.
    assert browser.execute_script("return window.renders.size") >= 2
    [user, assistant] = browser.execute_script("return window.rilletPlayground.messages()")
    assert user == {"role": "user", "content": "Show me how to reverse a string in Python."}
    assert assistant["role"] == "assistant" and assistant["content"]
    assert browser.find_element(By.ID, "notice").is_displayed() is False
    if os.environ.get("RILLET_SCREENSHOT"):
        browser.save_screenshot(os.environ["RILLET_SCREENSHOT"])


PAYLOADS = [
    '<script>window.pwned = "script"</script>',
    '<img src=x onerror="window.pwned = \'img\'">',
    "**<img src=x onerror=window.pwned=1>** and `<script>window.pwned=2</script>`",
    "```html\n<script>window.pwned = 3</script>\n<img src=x onerror=window.pwned=4>\n```",
    "[click me](javascript:window.pwned=5) <svg onload=window.pwned=6> <iframe src=javascript:window.pwned=7>",
    "- <b onmouseover=window.pwned=8>item</b>\n1. <style>body{display:none}</style>",
]
RENDER = """
return arguments[0].map((text) => {
  const box = document.createElement('div');
  box.appendChild(window.rilletMarkdown.render(text));
  document.getElementById('transcript').appendChild(box);
  const elements = [...box.querySelectorAll('*')];
  return {text: box.textContent, tags: elements.map((e) => e.tagName.toLowerCase()),
          attributes: elements.flatMap((e) => [...e.attributes].map((a) => a.name))};
});
"""


def test_the_renderer_builds_text_never_html(server, browser):
    open_playground(browser, server.base_url)
    rendered = browser.execute_script(RENDER, PAYLOADS)
    time.sleep(0.5)  # an image's onerror would have fired by now
    assert browser.execute_script("return window.pwned") is None
    allowed_tags = {"p", "br", "strong", "em", "code", "pre", "div", "ul", "ol", "li"}
    for payload, result in zip(PAYLOADS, rendered):
        assert set(result["tags"]) <= allowed_tags, (payload, result["tags"])
        assert set(result["attributes"]) <= {"class", "start"}, (payload, result["attributes"])
    assert rendered[0]["text"] == PAYLOADS[0] and rendered[1]["text"] == PAYLOADS[1]
    assert rendered[2]["tags"] == ["p", "strong", "code"]
    assert rendered[2]["text"] == "<img src=x onerror=window.pwned=1> and <script>window.pwned=2</script>"
    assert rendered[3]["tags"] == ["div", "div", "pre", "code"] and "<script>window.pwned = 3</script>" in rendered[3]["text"]
    assert rendered[4]["text"] == PAYLOADS[4]
    assert browser.execute_script("return document.querySelectorAll('#transcript img, #transcript script, "
                                  "#transcript a, #transcript svg, #transcript iframe, #transcript style').length") == 0

    text = ("# Title\n\nSome **bold**, *italic* and `code`.\nNext line.\n\n- one\n- two\n\n3. three\n4. four\n\n"
            "> quoted\n\n```\nx = 1\n```")
    [markdown] = browser.execute_script(RENDER, [text])
    assert markdown["tags"] == ["h3", "p", "strong", "em", "code", "br", "ul", "li", "li", "ol", "li", "li",
                                "blockquote", "div", "pre", "code"]
    assert browser.execute_script("return [...document.querySelectorAll('#transcript ol')].pop().start") == 3


def test_a_real_answer_with_html_is_shown_as_text(server, browser):
    open_playground(browser, server.base_url)
    browser.find_element(By.ID, "new-chat").click()
    set_field(browser, "temperature", "0")
    set_field(browser, "max-tokens", "40")
    question = 'Print this HTML tag without code fences: <img src=x onerror="window.pwned=1">'
    send(browser, question)
    time.sleep(0.5)
    assert browser.execute_script("return window.pwned") is None
    assert browser.execute_script("return document.querySelectorAll('#transcript img, #transcript script').length") == 0
    assert browser.find_element(By.CSS_SELECTOR, ".turn.user .content").text == question
    # Every line of the answer that holds markup is on the page as the characters the model wrote.
    [_, answer] = browser.execute_script("return window.rilletPlayground.messages()")
    shown = last_answer_text(browser)
    for line in answer["content"].splitlines():
        if "<" in line and not line.startswith("```"):
            assert line.strip() in shown


def test_the_api_key_field(keyed_cors_server, browser):
    open_playground(browser, keyed_cors_server.base_url, expect_models=False)
    # The page itself needs no key; its calls do, and it says so.
    wait_for(browser, lambda b: b.find_element(By.ID, "notice").is_displayed(), 30, "no notice of the missing key")
    assert "This server needs an API key" in browser.find_element(By.ID, "notice").text
    set_field(browser, "api-key", API_KEY)
    browser.find_element(By.ID, "api-key").send_keys(Keys.TAB)
    wait_for(browser, lambda b: b.execute_script("return document.getElementById('model').value") == MODEL_NAME, 30,
             "the model list did not load with the key")
    assert browser.find_element(By.ID, "notice").is_displayed() is False
    assert browser.execute_script("return localStorage.getItem('rillet.playground.apiKey')") == API_KEY

    open_playground(browser, keyed_cors_server.base_url)  # kept across a reload
    assert browser.find_element(By.ID, "api-key").get_attribute("value") == API_KEY
    set_field(browser, "max-tokens", "4")
    seen = len(chat_completions(keyed_cors_server))
    figures = send(browser, "Hi.")
    assert figures["completion_tokens"] and logged_after(keyed_cors_server, seen)["key_id"] == "key-1"

    set_field(browser, "api-key", "sk-wrong")
    browser.find_element(By.ID, "api-key").send_keys(Keys.TAB)
    wait_for(browser, lambda b: b.find_element(By.ID, "notice").is_displayed(), 30, "no notice of the wrong key")
    assert "This server needs an API key" in browser.find_element(By.ID, "notice").text
    browser.find_element(By.ID, "forget-key").click()
    assert browser.execute_script("return localStorage.getItem('rillet.playground.apiKey')") is None
    assert browser.find_element(By.ID, "api-key").get_attribute("value") == ""


FETCH_MODELS = """
const [url, key, done] = arguments;
fetch(url, {headers: {Authorization: 'Bearer ' + key}})
  .then((r) => done({status: r.status, requestId: r.headers.get('x-request-id')}))
  .catch((e) => done({error: String(e)}));
"""


def test_a_page_of_an_allowed_origin_may_call_the_api_and_others_may_not(server, keyed_cors_server, browser):
    # The keyed server allows the shared server's origin (http://127.0.0.1:PORT), not http://localhost:PORT.
    # The pages are /health, whose origin is the server's: the playground's own policy would let it
    # call only its own server.
    browser.get(f"{server.base_url}/health")
    allowed = browser.execute_async_script(FETCH_MODELS, f"{keyed_cors_server.base_url}/v1/models", API_KEY)
    assert allowed["status"] == 200 and allowed["requestId"].startswith("req_")
    browser.get(f"http://localhost:{server.port}/health")
    refused = browser.execute_async_script(FETCH_MODELS, f"{keyed_cors_server.base_url}/v1/models", API_KEY)
    assert "Failed to fetch" in refused.get("error", ""), refused


def test_no_playground_leaves_the_json_404():
    """create_app(playground=False); a real server with --no-playground: the one `rillet chat`
    starts (tests/ui/test_chat_cli.py)."""
    served = stub_app().state.served
    with TestClient(create_app(StubEngine(), served, playground=False)) as client:
        response = client.get("/")
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
        assert client.get("/playground/playground.js").status_code == 404
