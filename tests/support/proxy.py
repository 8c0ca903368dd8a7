"""A TCP proxy between gateway and broker that can cut, stall and slow the link (asyncio, own thread).

* `cut()`: close every connection (RST-free FIN) and refuse new ones until `restore()`;
* `stall()`: keep the sockets open but stop moving bytes (a dead link without RST: only keepalive notices);
* `slow(delay)`: delay every chunk.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

from support import free_port


class LinkProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.target = (target_host, target_port)
        self.mode = "pass"
        self.delay = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="link-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        """Connections relayed to the server."""
        self.attempts = 0
        """Connections the client opened, relayed or not (the server may be down)."""
        self.held_upstream = 0
        """Chunks from the client (the gateway) that a stall kept from the server: messages in flight."""

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _call(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(10)

    def start(self) -> None:
        self._thread.start()
        self._call(self._start())

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.attempts += 1
        if self.mode == "cut":
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer, upstream=True), self._pipe(up_reader, writer),
                             return_exceptions=True)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool = False) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if upstream and self.mode == "stall":
                    self.held_upstream += 1
                while self.mode == "stall":  # noqa: ASYNC110 - the mode is flipped from the test's thread
                    await asyncio.sleep(0.05)
                if self.mode == "cut":
                    break
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def _close_all(self) -> None:
        for w in list(self._writers):
            w.close()

    def cut(self) -> None:
        self.mode = "cut"
        self._call(self._close_all())

    def stall(self) -> None:
        self.mode = "stall"

    def slow(self, delay: float) -> None:
        self.delay = delay

    def restore(self) -> None:
        self.mode = "pass"
        self.delay = 0.0

    def close(self) -> None:
        async def _stop() -> None:
            if self._server is not None:
                self._server.close()
            await self._close_all()

        self._call(_stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
