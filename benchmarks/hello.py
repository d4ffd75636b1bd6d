"""A bare "hello" raw-ASGI app: the ceiling that forward auth is measured against.

It answers every HTTP request 200 with a five-byte body and reads nothing, so
serving it costs only uvicorn, the sockets and the load generator.
"""

from starlette.types import Receive, Scope, Send

BODY = b"hello"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"5")]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
