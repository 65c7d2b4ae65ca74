"""``fastgpu agent``: the small daemon on each GPU host of a multi-host pool.

It registers its host with the server (name, GPU type, device ids, CPUs, memory) with the
host's token, heartbeats, and starts and stops tenants' raylets only when the server asks in
a signed request (:mod:`fastgpu.pool.signing`), as the tenant's OS user, and only on its own
devices. Its raylets do not depend on it: a restarted agent finds them by their marker and
reports them (adopts them). Modules:

* :mod:`.raylets`: what runs on this host; start, stop, list (the only code here that
  touches processes).
* :mod:`.http_api`: the signed HTTP endpoint the server calls (127.0.0.1 unless configured).
* :mod:`.daemon`: settings, registration, heartbeats, ``main``.

Design: ``docs/design/agents.md``; operator guide: ``docs/agents.md``.
"""
