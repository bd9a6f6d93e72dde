"""Exact bytes to a server's port and every byte it answers, for requests that an HTTP client
library would refuse to send (raw header bytes, protocol errors): the request should say
`Connection: close`, since the answer is read until the server closes."""

from __future__ import annotations

import asyncio
from contextlib import suppress


async def exchange(port: int, data: bytes, limit_s: float = 10.0) -> bytes:
    """Send `data` to 127.0.0.1:`port`; what the server answered before it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), limit_s)
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()
