"""The message box: a textarea where Enter sends and Shift+Enter makes a new line.

ipywidgets' core Textarea has no key events, so it cannot tell Enter from Shift+Enter (a trailing-newline
heuristic with `continuous_update` breaks on Shift+Enter at the end and on pasted text). This is a ~60-line
anywidget instead: plain ES module source held in a Python string, loaded by anywidget's prebuilt frontend
extension, so there is no build step and it runs in JupyterLab, Notebook 7, VS Code and Voila.

The same module keeps the conversation scrolled to the newest message while the reader is near the bottom:
it finds the enclosing `.nim-chat-conv`, watches its `.nim-chat-messages` scroller with a MutationObserver,
and scrolls down after a change only if the reader was within 60 px of the bottom before it (tracked on
every scroll event) or has just sent a message.

Python side: `value` mirrors the text box on every input event, `on_submit(cb)` gets the text on Enter or
the Send button. Keydown events are kept from JupyterLab's shortcuts (Shift+Enter would run the cell).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anywidget
import traitlets

log = logging.getLogger("notebook_im.widgets")

_ESM = r"""
function render({ model, el }) {
  el.classList.add("nim-composer");
  el.setAttribute("data-lm-suppress-shortcuts", "true");
  const ta = document.createElement("textarea");
  ta.rows = 1;
  const btn = document.createElement("button");
  btn.textContent = "Send";
  btn.type = "button";
  el.append(ta, btn);

  const autosize = () => { ta.style.height = "auto"; ta.style.height = Math.min(ta.scrollHeight + 2, 140) + "px"; };
  const sync = () => {
    ta.placeholder = model.get("placeholder");
    ta.disabled = btn.disabled = model.get("disabled");
    if (ta.value !== model.get("value")) { ta.value = model.get("value"); autosize(); }
  };
  sync();
  model.on("change:value change:placeholder change:disabled", sync);

  // --- scroll to newest, only when the reader is near the bottom ---
  let stick = true, scroller = null, observer = null;
  const nearBottom = (s) => s.scrollHeight - s.scrollTop - s.clientHeight < 60;
  const toBottom = () => { if (scroller) scroller.scrollTop = scroller.scrollHeight; };
  const attach = (tries) => {
    const conv = el.closest(".nim-chat-conv");
    const s = conv && conv.querySelector(".nim-chat-messages");
    if (!s) { if (tries > 0) setTimeout(() => attach(tries - 1), 100); return; }
    scroller = s;
    scroller.addEventListener("scroll", () => { stick = nearBottom(scroller); }, { passive: true });
    observer = new MutationObserver(() => { if (stick) toBottom(); });
    observer.observe(scroller, { childList: true, subtree: true, characterData: true });
    toBottom();
  };
  attach(100);

  const submit = () => {
    const text = ta.value;
    if (!text.trim() || ta.disabled) return;
    model.send({ event: "submit", text: text });
    ta.value = "";
    autosize();
    model.set("value", "");
    model.save_changes();
    stick = true;
  };
  ta.addEventListener("input", () => { autosize(); model.set("value", ta.value); model.save_changes(); });
  ta.addEventListener("keydown", (e) => {
    e.stopPropagation();  // keep JupyterLab's notebook shortcuts out of the text box
    if (e.key === "Enter" && !e.shiftKey && !e.altKey && !e.ctrlKey && !e.metaKey && !e.isComposing) {
      e.preventDefault();
      submit();
    }
  });
  btn.addEventListener("click", submit);
  return () => { if (observer) observer.disconnect(); };
}
export default { render };
"""


class Composer(anywidget.AnyWidget):
    """The text box of a chat panel. `value` is the current text; `on_submit(cb)` gets each sent text."""

    _esm = _ESM
    value = traitlets.Unicode("").tag(sync=True)
    placeholder = traitlets.Unicode("Type a message").tag(sync=True)
    disabled = traitlets.Bool(False).tag(sync=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._submit_callbacks: list[Callable[[str], object]] = []
        self.on_msg(self._on_frontend_msg)

    def on_submit(self, callback: Callable[[str], object]) -> None:
        self._submit_callbacks.append(callback)

    def submit(self, text: str | None = None) -> None:
        """What Enter does in the browser: hand the text to the submit callbacks and clear the box."""
        text = self.value if text is None else text
        self._fire(text)
        self.value = ""

    def _fire(self, text: str) -> None:
        if not text.strip() or self.disabled:
            return
        for cb in list(self._submit_callbacks):
            try:
                cb(text)
            except Exception:  # noqa: BLE001 - a widget callback must not break the frontend's message loop
                log.exception("submit callback %r raised", cb)

    def _on_frontend_msg(self, _widget, content, _buffers) -> None:
        if isinstance(content, dict) and content.get("event") == "submit" and isinstance(content.get("text"), str):
            self._fire(content["text"])
