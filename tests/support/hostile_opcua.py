"""An asyncua server written to misbehave: `python hostile_opcua.py PORT` serves opc.tcp://127.0.0.1:PORT/bad.

Namespace 2, string NodeIds `ns=2;s=Bad.<name>`, every value rewritten every `PERIOD` seconds:

    Good      Double          a counter, always well-formed (the control)
    Latin1    String          "<n> °C" with the degree sign as ONE Latin-1 byte (0xB0): not UTF-8
    Deep      Int32 array     one element nested in 260 dimensions of length 1
    Huge      Int32[]         200,000 elements
    NoTime    Double          SourceTimestamp = DateTime MinValue (1601-01-01), a server time set
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys

from asyncua import Server, ua

PERIOD = 0.1
NAMES = ("Good", "Latin1", "Deep", "Huge", "NoTime")


def latin1_text(n: int) -> str:
    # asyncua encodes strings with surrogateescape: U+DCB0 goes on the wire as the raw byte 0xB0
    return f"{n} \udcb0C"


def deep_variant(n: int) -> ua.Variant:
    value: object = [n]
    for _ in range(259):
        value = [value]
    return ua.Variant(value, ua.VariantType.Int32, Dimensions=[1] * 260)


async def serve(port: int, ready: asyncio.Event | None = None) -> None:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bad")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:emsedge:test:hostile")
    folder = await server.nodes.objects.add_object(ua.NodeId("Bad", ns), "Bad")
    nodes = {}
    initial = {
        "Good": ua.Variant(0.0, ua.VariantType.Double),
        "Latin1": ua.Variant(latin1_text(0), ua.VariantType.String),
        "Deep": ua.Variant([0], ua.VariantType.Int32),
        "Huge": ua.Variant([0], ua.VariantType.Int32),
        "NoTime": ua.Variant(0.0, ua.VariantType.Double),
    }
    for name in NAMES:
        nodes[name] = await folder.add_variable(ua.NodeId(f"Bad.{name}", ns), name, initial[name])
    async with server:
        print("ready", flush=True)
        if ready is not None:
            ready.set()
        n = 0
        while True:
            n += 1
            now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            values = {
                "Good": ua.DataValue(ua.Variant(float(n), ua.VariantType.Double)),
                "Latin1": ua.DataValue(ua.Variant(latin1_text(n), ua.VariantType.String)),
                "Deep": ua.DataValue(deep_variant(n)),
                "Huge": ua.DataValue(ua.Variant([n] * 200_000, ua.VariantType.Int32)),
                "NoTime": ua.DataValue(ua.Variant(float(n), ua.VariantType.Double),
                                       SourceTimestamp=dt.datetime(1601, 1, 1), ServerTimestamp=now),
            }
            for name, value in values.items():
                await server.write_attribute_value(nodes[name].nodeid, value)
            await asyncio.sleep(PERIOD)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
