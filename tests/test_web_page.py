"""The web chat page (``chatbot/serving/static``) in a real browser: Debian's headless Chromium
driven by Selenium against ``chatbot serve``'s app under uvicorn, on the tiny model.

Skipped, saying why, without Chromium and chromedriver (``apt-get install chromium
chromium-driver``) or Selenium (the ``test`` extra)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from live_server import serving

from chatbot.serving.security import owner_of

ROOT = Path(__file__).parent.parent
# The README's picture is refreshed only when asked (CHATBOT_SCREENSHOT=1): a test run leaves
# the checkout as it was.
README_SCREENSHOT = ROOT / "docs" / "web_chat.png"
KEY = "web-page-key-0123456789"


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (name if Path(name).is_file() else None)
        if found:
            return found
    return None


CHROMIUM = _find("chromium", "/usr/bin/chromium", "chromium-browser")
CHROMEDRIVER = _find("chromedriver", "/usr/bin/chromedriver")

try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the check below says so
    webdriver = None

MISSING = ("selenium is not installed (pip install -e '.[test]')" if webdriver is None else
           "Chromium and chromedriver are not installed (apt-get install -y chromium chromium-driver)"
           if CHROMIUM is None or CHROMEDRIVER is None else None)

WAIT_S = 15


# --- the server ---------------------------------------------------------------------------------


def call(base: str, path: str, key: str | None = None, method: str = "GET", body=None):
    """(status, JSON body) of one API call, as a client other than the page."""
    request = urllib.request.Request(base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


# --- the browser --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if MISSING:
        pytest.skip(f"the browser test needs a real browser: {MISSING}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1100,750", "--force-device-scale-factor=1",
                 "--lang=en-US"):
        options.add_argument(flag)
    profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile.name}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        driver.set_window_size(1100, 750)  # then the page itself that size: headless counts no frame
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        driver.set_window_size(1100 + 1100 - inner[0], 750 + 750 - inner[1])
        yield driver
    finally:
        driver.quit()
        profile.cleanup()


def console_errors(driver, allowed=()) -> list[str]:
    """The browser's SEVERE log lines (JavaScript errors, console.error, failed loads) since the
    last call, but for failed loads whose message holds one of ``allowed``."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and not any(a in e["message"] for a in allowed)]


def wait(driver, condition, message: str, timeout: float = WAIT_S):
    return WebDriverWait(driver, timeout).until(condition, message)


def page_error(driver) -> str:
    box = driver.find_element(By.ID, "error")
    return "" if not box.is_displayed() else box.text


def log_texts(driver) -> list[tuple[str, str]] | None:
    """The conversation shown: (role, text) per bubble; None while the page is replacing it (a
    bubble read went stale), so that a wait asks again."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        return [(li.get_attribute("data-role"), li.find_element(By.CSS_SELECTOR, ".text").text)
                for li in driver.find_elements(By.CSS_SELECTOR, "#log > li")]
    except StaleElementReferenceException:
        return None


def send(driver, question: str):
    """Types ``question`` and presses Enter; returns the bot bubble once its reply is stored."""
    before = len(driver.find_elements(By.CSS_SELECTOR, "#log > li.bot[data-message-id]"))
    box = driver.find_element(By.ID, "message")
    box.send_keys(question, Keys.ENTER)

    def replied(d):
        if page_error(d):
            raise AssertionError(f"the page shows an error: {page_error(d)}")
        done = d.find_elements(By.CSS_SELECTOR, "#log > li.bot[data-message-id]")
        return done[-1] if len(done) > before else False
    return wait(driver, replied, f"no reply to {question!r}")


def open_session(driver, label: str, expected: list[tuple[str, str]]):
    button = wait(driver, EC.element_to_be_clickable(
        (By.XPATH, f"//ul[@id='sessions']/li/button[contains(@class,'open')][span[@class='name' and text()='{label}']]")),
        f"no session {label} in the list")
    button.click()
    wait(driver, lambda d: d.find_element(By.ID, "session-title").text == label and log_texts(d) == expected,
         f"session {label} did not show {expected}")


# --- tests --------------------------------------------------------------------------------------
def test_chat_page_streams_replies_keeps_sessions_and_feedback(browser, bot, tiny_pairs, tmp_path):
    (q1, a1), (q2, a2), (q3, a3) = tiny_pairs[0], tiny_pairs[2], tiny_pairs[4]
    with serving(bot) as base:
        browser.get(base + "/")
        wait(browser, lambda d: "tiny" in d.find_element(By.ID, "model").text, "the model name never showed")
        assert browser.find_element(By.ID, "no-sessions").is_displayed()
        assert not browser.find_element(By.ID, "key-dialog").is_displayed()

        # A question, Enter: the reply streams in (one delta a word) and both turns are stored.
        reply = send(browser, q1)
        assert reply.find_element(By.CSS_SELECTOR, ".text").text == a1
        assert int(reply.get_attribute("data-deltas")) == len(a1.split())
        assert "confidence" in reply.find_element(By.CSS_SELECTOR, ".meta").text
        assert log_texts(browser) == [("user", q1), ("bot", a1)]
        status, listed = call(base, "/api/sessions")
        assert status == 200 and len(listed["sessions"]) == 1
        first = listed["sessions"][0]
        assert first["message_count"] == 2 and first["name"] is None
        _, page = call(base, f"/api/sessions/{first['id']}/messages")
        assert [(m["role"], m["text"]) for m in page["messages"]] == [("user", q1), ("bot", a1)]
        assert page["messages"][1]["id"] == int(reply.get_attribute("data-message-id"))
        wait(browser, lambda d: "2 messages" in d.find_element(By.CSS_SELECTOR, "#sessions li.current").text,
             "the session list does not count the two messages")

        # A second, named session; switching shows each session's own conversation.
        browser.find_element(By.ID, "new-session-name").send_keys("second", Keys.ENTER)
        wait(browser, lambda d: d.find_element(By.ID, "session-title").text == "second" and log_texts(d) == [],
             "the new session did not open empty")
        send(browser, q2)
        assert log_texts(browser) == [("user", q2), ("bot", a2)]
        open_session(browser, f"#{first['id']}", [("user", q1), ("bot", a1)])
        open_session(browser, "second", [("user", q2), ("bot", a2)])
        open_session(browser, f"#{first['id']}", [("user", q1), ("bot", a1)])
        # The open session is in the address: a reload comes back to it (it opened the latest
        # one, "second"), and Back goes to the session before.
        assert browser.current_url.endswith(f"#session={first['id']}")
        browser.refresh()
        wait(browser, lambda d: log_texts(d) == [("user", q1), ("bot", a1)], "the reload lost the open session")
        browser.back()
        wait(browser, lambda d: log_texts(d) == [("user", q2), ("bot", a2)], "Back did not open the session before")
        browser.forward()
        wait(browser, lambda d: log_texts(d) == [("user", q1), ("bot", a1)], "Forward did not come back")

        # 👍 on the reply: stored as the message's feedback.
        reply = browser.find_element(By.CSS_SELECTOR, "#log > li.bot")
        message_id = int(reply.get_attribute("data-message-id"))
        label = reply.find_element(By.CSS_SELECTOR, "button.rate.good").get_attribute("aria-label")
        assert label.startswith("Good reply: " + " ".join(a1.split()[:2]))  # which reply's button, no emoji read
        reply.find_element(By.CSS_SELECTOR, "button.rate.good").click()
        wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#log > li.bot button.rate.good")
             .get_attribute("aria-pressed") == "true", "👍 was not marked as given")
        saved = bot.store.get_feedback(message_id)
        assert saved is not None and saved.rating == "good" and saved.correction is None

        # A correction through the small box beside the reply.
        send(browser, q3)
        last = browser.find_elements(By.CSS_SELECTOR, "#log > li.bot")[-1]
        last.find_element(By.CSS_SELECTOR, "button.correct").click()
        box = wait(browser, EC.visibility_of_element_located((By.CSS_SELECTOR, "form.correction textarea")),
                   "the correction box did not open")
        box.send_keys("The sky is blue on a clear day.")
        browser.find_element(By.CSS_SELECTOR, "form.correction button[type=submit]").click()
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#log > li.bot .corrected")
             and not d.find_elements(By.CSS_SELECTOR, "form.correction"), "the correction was not saved")
        saved = bot.store.get_feedback(int(last.get_attribute("data-message-id")))
        assert saved.correction == "The sky is blue on a clear day."
        assert log_texts(browser) == [("user", q1), ("bot", a1), ("user", q3), ("bot", a3)]

        # Feedback given earlier shows again when the session is opened from its history.
        open_session(browser, "second", [("user", q2), ("bot", a2)])
        open_session(browser, f"#{first['id']}", [("user", q1), ("bot", a1), ("user", q3), ("bot", a3)])
        replies = browser.find_elements(By.CSS_SELECTOR, "#log > li.bot")
        assert replies[0].find_element(By.CSS_SELECTOR, "button.rate.good").get_attribute("aria-pressed") == "true"
        assert replies[1].find_elements(By.CSS_SELECTOR, ".corrected")

        # The README's screenshot: a short real conversation, 👍 given, a correction saved.
        screenshot = README_SCREENSHOT if os.environ.get("CHATBOT_SCREENSHOT") else tmp_path / "web_chat.png"
        browser.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size < 200_000

        # Deleting a session (after the confirm) removes it from the list and the store.
        delete = browser.find_element(
            By.XPATH, "//ul[@id='sessions']/li[button/span[@class='name' and text()='second']]/button[contains(@class,'delete')]")
        delete.click()
        wait(browser, EC.alert_is_present(), "no confirm before deleting").accept()
        wait(browser, lambda d: "second" not in d.find_element(By.ID, "sessions").text, "the session was not deleted")
        assert [s.id for s in bot.sessions()] == [first["id"]]

        # Server text is shown as text, never parsed as HTML; a server error is shown in one
        # line on the page (a name that exists: 409).
        name = "<i>taken<i>"  # markup without a "/", which no session name may hold (it is a URL path segment)
        browser.find_element(By.ID, "new-session-name").send_keys(name, Keys.ENTER)
        wait(browser, lambda d: d.find_element(By.ID, "session-title").text == name, "no session named as typed")
        assert name in browser.find_element(By.ID, "sessions").text
        browser.find_element(By.ID, "new-session-name").send_keys(name, Keys.ENTER)
        wait(browser, lambda d: page_error(d).startswith("a session with this name exists"),
             "the 409 was not shown")
        browser.find_element(By.ID, "error-close").click()
        assert page_error(browser) == ""
        assert console_errors(browser, allowed=("status of 409",)) == []

        # Everything the page loaded came from the server itself: no CDN, no web fonts.
        loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(url.startswith(base + "/") for url in loaded), loaded


def test_the_page_never_writes_server_text_as_html():
    script = (ROOT / "chatbot" / "serving" / "static" / "app.js").read_text()
    assert "innerHTML" not in script and "outerHTML" not in script and "insertAdjacentHTML" not in script


def stored_keys(browser) -> dict:
    return browser.execute_script("return {local: localStorage.getItem('chatbot.apiKey'), "
                                  "session: sessionStorage.getItem('chatbot.apiKey')}")


def test_chat_page_asks_for_the_api_key_and_pages_history(browser, bot, tiny_pairs):
    (q1, a1), (q2, a2) = tiny_pairs[1], tiny_pairs[3]
    with serving(bot, api_keys=(KEY,), page_limit=2) as base:
        browser.get(base + "/")
        dialog = wait(browser, EC.visibility_of_element_located((By.ID, "key-dialog")), "the page did not ask for a key")
        assert "needs an API key" in dialog.text

        # A wrong key is refused (401) and asked for again; the right one works.
        browser.find_element(By.ID, "key-input").send_keys("not-the-key-0000000000", Keys.ENTER)
        wait(browser, lambda d: d.find_element(By.ID, "key-dialog").is_displayed()
             and "refused" in d.find_element(By.ID, "key-reason").text, "a wrong key was not refused")
        browser.find_element(By.ID, "key-input").send_keys(KEY, Keys.ENTER)
        wait(browser, EC.invisibility_of_element_located((By.ID, "key-dialog")), "the right key was not taken")
        wait(browser, lambda d: d.find_element(By.ID, "no-sessions").is_displayed(), "the sessions did not load")
        # Not ticked "remember": kept for this tab only (a reload keeps it, closing the tab does not).
        assert stored_keys(browser) == {"local": None, "session": KEY}
        assert browser.find_element(By.ID, "forget-key").is_displayed()

        assert send(browser, q1).find_element(By.CSS_SELECTOR, ".text").text == a1
        send(browser, q2)
        [info] = bot.store.list_sessions(owner=owner_of(KEY))
        assert info.message_count == 4
        assert call(base, "/api/sessions")[0] == 401
        assert len(call(base, "/api/sessions", key=KEY)[1]["sessions"]) == 1

        # A reload keeps the key and opens the latest session on its newest page (page_limit 2):
        # "load older" brings the rest.
        browser.refresh()
        wait(browser, lambda d: log_texts(d) == [("user", q2), ("bot", a2)], "the reload did not show the last page")
        assert not browser.find_element(By.ID, "key-dialog").is_displayed()
        older = browser.find_element(By.ID, "load-older")
        assert older.is_displayed()
        older.click()
        wait(browser, lambda d: log_texts(d) == [("user", q1), ("bot", a1), ("user", q2), ("bot", a2)],
             "load older did not bring the first exchange")
        wait(browser, EC.invisibility_of_element_located((By.ID, "load-older")), "load older stayed")

        # Forgetting the key clears it and asks again.
        browser.find_element(By.ID, "forget-key").click()
        wait(browser, EC.visibility_of_element_located((By.ID, "key-dialog")), "no key asked for after forgetting it")
        assert stored_keys(browser) == {"local": None, "session": None}
        assert log_texts(browser) == []
        assert page_error(browser) == ""
        assert console_errors(browser, allowed=("status of 401",)) == []

        # Escape closes it (a browser blocks at most the first one): the page says why nothing
        # loads, and the next message asks again (every request hung until a reload).
        for _ in range(2):
            if browser.find_element(By.ID, "key-dialog").is_displayed():
                browser.find_element(By.ID, "key-input").send_keys(Keys.ESCAPE)
        wait(browser, lambda d: "needs an API key" in page_error(d), "no word on the missing key after Escape")
        browser.find_element(By.ID, "message").send_keys(q1, Keys.ENTER)
        wait(browser, EC.visibility_of_element_located((By.ID, "key-dialog")), "the next message did not ask again")
        # Ticked "remember": kept in this browser (localStorage) until "Forget key".
        browser.find_element(By.ID, "key-remember").click()
        browser.find_element(By.ID, "key-input").send_keys(KEY, Keys.ENTER)
        wait(browser, lambda d: ("bot", a1) in log_texts(d), "no reply once the key was given")
        assert stored_keys(browser) == {"local": KEY, "session": None}
        browser.refresh()
        wait(browser, lambda d: ("bot", a1) in log_texts(d), "a reload did not keep the remembered key")
        assert not browser.find_element(By.ID, "key-dialog").is_displayed()


def test_on_a_phone_the_session_list_folds_away_once_a_session_is_open(browser, bot, tiny_pairs):
    """At 390 px the list took a third of the screen above the conversation, and there was no
    way to put it away; at 360 px the message box's hint was clipped, with a scroll bar."""
    question, answer = tiny_pairs[1]
    wide = browser.get_window_size()
    def hint_fits(d):  # the empty message box shows its whole hint, no scroll bar
        return d.execute_script("const m = document.getElementById('message'); "
                                "return m.value === '' && m.scrollHeight <= m.clientHeight;")

    try:
        browser.set_window_size(360 + wide["width"] - 1100, 740 + wide["height"] - 750)
        with serving(bot) as base:
            browser.get(base + "/")
            wait(browser, hint_fits, "the message box's hint was clipped at 360 px")
            browser.set_window_size(390 + wide["width"] - 1100, 844 + wide["height"] - 750)
            send(browser, question)
            browser.refresh()  # opens the session in the address
            wait(browser, lambda d: log_texts(d) == [("user", question), ("bot", answer)], "the session did not open")
            toggle = browser.find_element(By.ID, "toggle-sessions")
            sidebar = browser.find_element(By.ID, "sidebar")
            assert toggle.is_displayed() and not sidebar.is_displayed()
            assert toggle.get_attribute("aria-expanded") == "false"
            toggle.click()
            assert sidebar.is_displayed() and toggle.get_attribute("aria-expanded") == "true"
    finally:
        browser.set_window_size(wide["width"], wide["height"])
    assert not browser.find_element(By.ID, "toggle-sessions").is_displayed()  # wide: always shown
    assert hint_fits(browser) and "Shift+Enter" in browser.find_element(By.ID, "message").get_attribute("placeholder")


def test_code_blocks_keep_their_layout_and_text_reads_in_its_own_direction(browser, bot, tiny_pairs):
    """Fenced code (98 of the default corpus' answers) was shown in the text font with its fences,
    wrapped back to column 0 on a phone; Arabic was laid out left to right."""
    pasted = "Why does this fail?\n```\ndef f(x):\n    return x  # <b>not bold</b>\n```\nThanks"
    with serving(bot) as base:
        browser.get(base + "/")
        wait(browser, lambda d: "tiny" in d.find_element(By.ID, "model").text, "the model name never showed")
        browser.execute_script("document.getElementById('message').value = arguments[0];", "\n" + pasted + "\n\n")
        browser.find_element(By.ID, "send").click()
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#log > li.bot[data-message-id]"), "no reply")

        def shown(d):  # the user's bubble: its text nodes and code blocks, in order
            box = d.find_element(By.CSS_SELECTOR, "#log > li.user .text")
            return d.execute_script("return [arguments[0].dir, Array.from(arguments[0].childNodes, n => "
                                    "n.nodeType === 3 ? ['text', n.data] : [n.localName, n.textContent])];", box)
        expected = ["auto", [["text", "Why does this fail?"], ["pre", "def f(x):\n    return x  # <b>not bold</b>"],
                             ["text", "Thanks"]]]
        assert shown(browser) == expected  # blank lines around it trimmed; the code as typed, as text
        code = browser.find_element(By.CSS_SELECTOR, "#log > li.user .text pre")
        assert code.value_of_css_property("white-space") == "pre" and "mono" in code.value_of_css_property("font-family")
        assert not browser.find_elements(By.CSS_SELECTOR, "#log b")
        browser.refresh()  # from the stored history: the same
        wait(browser, lambda d: shown(d) == expected, "the stored message did not show the same")
        assert bot.store.history(bot.store.list_sessions()[0].id)[0].text == pasted

        # Escape in the correction box: focus goes back to the button that opened it.
        reply = browser.find_element(By.CSS_SELECTOR, "#log > li.bot")
        reply.find_element(By.CSS_SELECTOR, "button.correct").click()
        reply.find_element(By.CSS_SELECTOR, "form.correction textarea").send_keys(Keys.ESCAPE)
        assert not reply.find_elements(By.CSS_SELECTOR, "form.correction")
        assert browser.switch_to.active_element == reply.find_element(By.CSS_SELECTOR, "button.correct")
        assert browser.find_element(By.ID, "message").get_attribute("maxlength") == str(bot.dialogue.max_message_chars)


def test_leaving_and_coming_back_while_a_reply_is_on_its_way_shows_it(browser, bot, tiny_pairs):
    """The conversation was rebuilt from the history stored before the question, and the reply
    went into a bubble no longer on the page: the exchange was missing until a reload."""
    (q1, a1), (q2, a2) = tiny_pairs[1], tiny_pairs[2]
    with serving(bot) as base:
        browser.get(base + "/")
        send(browser, q1)
        first = call(base, "/api/sessions")[1]["sessions"][0]["id"]
        browser.find_element(By.ID, "new-session-name").send_keys("other", Keys.ENTER)
        wait(browser, lambda d: d.find_element(By.ID, "session-title").text == "other", "no new session")
        open_session(browser, f"#{first}", [("user", q1), ("bot", a1)])
        browser.execute_script("""  // a slow server: each question reaches it 2 s late
            const original = window.fetch;
            window.fetch = (url, init) => init && init.method === "POST" && /messages$/.test(url)
              ? new Promise((done) => setTimeout(done, 2000)).then(() => original(url, init)) : original(url, init);""")
        browser.find_element(By.ID, "message").send_keys(q2, Keys.ENTER)
        open_session(browser, "other", [])
        open_session(browser, f"#{first}", [("user", q1), ("bot", a1)])
        wait(browser, lambda d: log_texts(d) == [("user", q1), ("bot", a1), ("user", q2), ("bot", a2)],
             "the exchange made while away did not show")


def test_coming_back_to_the_tab_shows_what_another_tab_said(browser, bot, tiny_pairs):
    """Two tabs on one session drifted apart: the second never showed the first one's turns."""
    (q1, a1), (q2, a2) = tiny_pairs[1], tiny_pairs[2]
    with serving(bot) as base:
        browser.get(base + "/")
        send(browser, q1)
        sid = int(browser.current_url.rsplit("=", 1)[1])
        status, _ = call(base, f"/api/sessions/{sid}/messages", method="POST", body={"text": q2})
        assert status == 200  # "another tab"
        browser.execute_script("document.dispatchEvent(new Event('visibilitychange'))")
        wait(browser, lambda d: log_texts(d) == [("user", q1), ("bot", a1), ("user", q2), ("bot", a2)],
             "the other tab's turn did not appear")


def test_a_server_error_shows_the_request_id_its_log_line_names(browser, bot, monkeypatch):
    """A user who reports a failure can quote what the operator's log names (X-Request-ID)."""
    import re

    from chatbot.errors import StoreError

    monkeypatch.setattr(bot, "sessions", lambda *a, **k: (_ for _ in ()).throw(StoreError("disk I/O error")))
    with serving(bot) as base:
        browser.get(base + "/")
        shown = wait(browser, lambda d: page_error(d), "the failed session list was not shown")
    assert re.search(r"the session database is unavailable; retry later \(request req_[0-9a-f]{32}\)", shown), shown
