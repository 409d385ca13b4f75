"""The SIP stack that runs on the library loop, built by composition.

- `stack.SipStack`: transactions (sip/transaction.py tables) + timers + the executor of their actions, on a
  transport it is given (`net.base.Transport`), reporting what it sends and receives to a sink it is given
  (`sink.TraceSink`) and handing requests to a handler object (`stack.StackHandler`). No subclass hooks.
- `agent.UserAgent`: one endpoint's user agent: REGISTER (driven by the `im.registration` machine), digest
  retries (`auth.ClientAuth`), pager MESSAGE, INVITE dialogs, SUBSCRIBE; it is the handler of its stack.
- `targets`: where a request goes (Route, Request-URI), with host names resolved off the loop.

The embedded server (server/) builds its proxy on the same `SipStack`.
"""
