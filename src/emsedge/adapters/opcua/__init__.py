"""OPC UA adapter (asyncua client): subscriptions or Read polling, exact security, browse and cert tools.

The registry target is `emsedge.adapters.opcua:build`; `main_browse` and `main_gen_cert` back the
`emsedge browse` and `emsedge opcua-cert` commands.
"""

from __future__ import annotations

from emsedge.adapters.opcua.adapter import OpcUaPoller, OpcUaSubscriber, build
from emsedge.adapters.opcua.tools import main_browse, main_gen_cert

__all__ = ["OpcUaPoller", "OpcUaSubscriber", "build", "main_browse", "main_gen_cert"]
