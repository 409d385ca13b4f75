"""Jupyter widgets: `ChatPanel` (a chat client in a cell) and `LadderView` (a live SIP ladder diagram).

Composites of ipywidgets core widgets plus one tiny anywidget (the message box, for Enter/Shift+Enter and
scroll-to-newest). This package's `__init__` imports nothing heavy: `notebook_im.widgets.chat` and
`notebook_im.widgets.ladder_view` import ipywidgets when they are first used (`nim.ChatPanel`, `nim.LadderView`).
The HTML they produce comes from `notebook_im.widgets.render`, which needs no widget library.
"""
