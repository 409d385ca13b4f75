"""Two chat panels in real JupyterLab, driven by headless Chromium (Debian `chromium` + Python Playwright).

JupyterLab runs on a 127.0.0.1 ephemeral port with a known token and an isolated config/runtime/workspace
directory; the notebook holds two ChatPanels (alice and bob, one session over the embedded server). The test
types into alice's box and checks that bob's panel shows "typing" and then the message, and back.
Screenshots go to tests/browser/artifacts/ (and to docs/chat-panel.png with NIM_UPDATE_SCREENSHOT=1).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = os.environ.get("NIM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

SETUP = """\
import time
import ipywidgets as widgets
import notebook_im as nim

server = nim.Server().start().result(10)
platform = nim.Platform()
alice = platform.endpoint("sip:alice@example.test", server=server, display_name="Alice Smith").result(10)
bob = platform.endpoint("sip:bob@example.test", server=server, display_name="Bob Jones").result(10)
invited = []
bob.sessions.on_incoming(lambda inv: (invited.append(inv.session), inv.accept()))
a_session = alice.sessions.create("sip:bob@example.test").result(10)
deadline = time.monotonic() + 10
while not (invited and invited[0].state.value == "connected") and time.monotonic() < deadline:
    time.sleep(0.01)
b_session = invited[0]
b_session.send("Hi Alice! Did my INVITE reach you?").result(5)
b_session.send("The embedded server says we are both registered.").result(5)
a_session.send("It did: 180, 200 OK, ACK. We are in a session.").result(5)
a_session.send('And <b>rich text</b> works too <img src=x onerror="window.nimXss=1">', "text/html").result(5)
"""

PANELS = """\
names = {"sip:alice@example.test": "Alice Smith", "sip:bob@example.test": "Bob Jones"}
left = nim.ChatPanel(a_session, names=names, height="300px")
right = nim.ChatPanel(b_session, names=names, height="300px")
widgets.HBox([left, right], layout=widgets.Layout(gap="16px", width="100%"))
"""

LADDER = """\
nim.LadderView(platform, height="260px", interval=0.2)
"""


def _notebook(path: Path) -> None:
    cells = [
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": src}
        for src in (SETUP, PANELS, LADDER)
    ]
    nb = {
        "cells": cells,
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    }
    path.write_text(json.dumps(nb))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    import jupyterlab  # noqa: F401 - the test extra; `make test` installs it
    import playwright  # noqa: F401

    assert Path(CHROMIUM).exists(), (
        f"chromium not found at {CHROMIUM} (Debian package chromium; `make test` installs it)"
    )
    port, token = _free_port(), secrets.token_hex(16)
    work = tmp_path / "nb"
    work.mkdir()
    _notebook(work / "chat.ipynb")
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
        PYTHONPATH=str(ROOT),
        HOME=str(tmp_path),
    )
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={work}",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=",
        "--ServerApp.open_browser=False",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        "--ServerApp.terminals_enabled=False",
        "--ServerApp.allow_root=True",
    ]
    log = open(tmp_path / "jupyterlab.log", "wb")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("JupyterLab did not start:\n" + (tmp_path / "jupyterlab.log").read_text()[-3000:])
            time.sleep(0.25)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_two_panels_in_jupyterlab(lab):
    from playwright.sync_api import expect, sync_playwright

    base, token = lab
    ARTIFACTS.mkdir(exist_ok=True)
    dialogs: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000}, device_scale_factor=1)
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(f"{base}/lab/tree/chat.ipynb?token={token}")
            page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=90_000)
            # wait for the kernel, then run everything
            page.wait_for_function(
                "(() => { const w = window.jupyterapp.shell.currentWidget;"
                " return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
                " && w.sessionContext.session.kernel.status === 'idle'; })()",
                timeout=90_000,
            )
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            convs = page.locator(".nim-chat-conv")
            expect(convs).to_have_count(2, timeout=90_000)
            left, right = convs.nth(0), convs.nth(1)
            expect(left.locator(".nim-chat-head")).to_contain_text("connected", timeout=30_000)
            expect(right.locator(".nim-chat-messages")).to_contain_text("rich text")
            expect(left.locator("textarea")).to_be_enabled(timeout=30_000)

            # alice types: bob's panel shows it, then gets the two-line message
            box = left.locator("textarea")
            box.click()
            box.press_sequentially("Great, I'm typing this in Chromium", delay=25)
            expect(right.locator(".nim-chat-status")).to_contain_text(
                "Alice Smith <alice@example.test> is typing", timeout=15_000
            )
            box.press("Shift+Enter")
            box.press_sequentially("(Shift+Enter made this second line)", delay=10)
            expect(box).to_have_value("Great, I'm typing this in Chromium\n(Shift+Enter made this second line)")
            box.press("Enter")
            expect(box).to_have_value("")
            expect(right.locator(".nim-chat-messages")).to_contain_text("I'm typing this in Chromium", timeout=15_000)
            last = right.locator(".nim-msg").last
            assert last.inner_text().splitlines()[-1] == "(Shift+Enter made this second line)"
            # bob's panel is on screen (the front end reports its view), so the message is seen: a blue ✓✓ Seen
            expect(left.locator(".nim-msg").last).to_contain_text("Seen", timeout=15_000)
            expect(left.locator(".nim-msg").last.locator(".nim-state-displayed")).to_have_count(1)
            expect(right.locator(".nim-chat-status")).not_to_contain_text("typing", timeout=15_000)

            # bob answers and starts another line: the screenshot shows the conversation mid-flight
            rbox = right.locator("textarea")
            rbox.click()
            rbox.press_sequentially("Both lines arrived", delay=10)
            rbox.press("Enter")
            expect(left.locator(".nim-chat-messages")).to_contain_text("Both lines arrived", timeout=15_000)
            rbox.press_sequentially("Let me check the ladder diagram", delay=20)
            expect(left.locator(".nim-chat-status")).to_contain_text(
                "Bob Jones <bob@example.test> is typing", timeout=15_000
            )
            page.wait_for_timeout(400)  # let the typing dots and scrolling settle
            output = page.locator(".jp-OutputArea-output").filter(has=page.locator(".nim-chat-conv"))
            shot = output.screenshot(path=str(ARTIFACTS / "chat-panel.png"))
            if os.environ.get("NIM_UPDATE_SCREENSHOT"):
                (ROOT / "docs").mkdir(exist_ok=True)
                (ROOT / "docs" / "chat-panel.png").write_bytes(shot)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab.png"))

            # the live ladder below the panels has drawn the session and grows with it
            ladder = page.locator(".nim-ladder-view")
            expect(ladder.locator("svg")).to_have_count(1, timeout=15_000)
            expect(ladder).to_contain_text("INVITE")
            expect(ladder).to_contain_text("Both lines arrived"[:10], timeout=15_000)
            ladder.screenshot(path=str(ARTIFACTS / "ladder-view.png"))

            # a hostile plain-text body stays text; the sanitised text/html one ran nothing either
            rbox.fill("")
            rbox.press_sequentially('<img src=x onerror="window.nimXss=2">', delay=5)
            rbox.press("Enter")
            expect(left.locator(".nim-chat-messages")).to_contain_text(
                '<img src=x onerror="window.nimXss=2">', timeout=15_000
            )
            page.wait_for_timeout(300)
            assert page.evaluate("window.nimXss") is None
            assert dialogs == []
            # Shift+Enter in the box did not run the notebook cell again: still exactly two panels
            expect(convs).to_have_count(2)

            # scrolling: follows the newest message while the reader is at the bottom, stays put otherwise
            scroller = left.locator(".nim-chat-messages")
            gap = "el => el.scrollHeight - el.scrollTop - el.clientHeight"
            for i in range(8):
                rbox.press_sequentially(f"ping {i}", delay=2)
                rbox.press("Enter")
            expect(scroller).to_contain_text("ping 7", timeout=15_000)
            page.wait_for_timeout(300)
            assert scroller.evaluate("el => el.scrollHeight > el.clientHeight + 100")  # it does overflow
            assert scroller.evaluate(gap) < 60
            scroller.evaluate("el => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); }")
            rbox.press_sequentially("are you still reading?", delay=2)
            rbox.press("Enter")
            expect(scroller).to_contain_text("are you still reading?", timeout=15_000)
            page.wait_for_timeout(300)
            assert scroller.evaluate("el => el.scrollTop") == 0  # a reader scrolled up is left where they are
            left.locator("textarea").press_sequentially("yes", delay=2)
            left.locator("textarea").press("Enter")  # sending jumps back to the newest message
            expect(right.locator(".nim-chat-messages")).to_contain_text("yes", timeout=15_000)
            page.wait_for_timeout(300)
            assert scroller.evaluate(gap) < 60
        finally:
            browser.close()
