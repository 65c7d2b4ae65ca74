"""The GPU pool: hosts with typed devices, and tenants' own Ray clusters carved from them.

This package is the only code that starts or stops Ray processes for tenants (the controller
calls it; nothing above the controller does). Modules:

* :mod:`.hosts`: the inventory (hosts, devices) and device assignment; pure.
* :mod:`.runtime`: isolation mode, tenants' OS users, their interpreter, private dirs.
* :mod:`.processes`: start a Ray node as a user, find its processes, stop them.
* :mod:`.tenant_cluster`: one tenant's cluster: head, raylets per (lease, host), keeper.
* :mod:`.keeper`: the driver inside a tenant's cluster that makes placement groups there.

Design: ``docs/design/tenant-clusters.md``.
"""
