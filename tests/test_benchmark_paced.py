"""The open-loop client of ``benchmarks.limits`` keeps its schedule whatever the server does."""

import asyncio
import threading
from collections.abc import Iterator

import pytest
from benchmarks.paced import PacedClient

DELAY = 0.2  # seconds the server takes to answer


class SlowServer:
    """HTTP/1.1 on 127.0.0.1 that answers every request after DELAY, with ``status``."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = b'{"success":false,"message":"No"}' if self.status != 200 else b""
        answer = f"HTTP/1.1 {self.status} X\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                await asyncio.sleep(DELAY)
                writer.write(answer + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def run(self) -> None:
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        server.close()
        self.loop.run_until_complete(server.wait_closed())
        self.loop.close()


@pytest.fixture
def slow_server(request: pytest.FixtureRequest) -> Iterator[SlowServer]:
    server = SlowServer(getattr(request, "param", 200))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server.ready.wait(5)
    yield server
    server.loop.call_soon_threadsafe(server.loop.stop)
    thread.join(5)


@pytest.mark.slow
def test_every_request_due_is_sent_and_timed_from_when_it_was_due(
    slow_server: SlowServer,
) -> None:
    client = PacedClient(rate=20, connections=2, max_connections=2)

    result = client.run(f"http://127.0.0.1:{slow_server.port}/", {}, 1.0)

    # Two connections answer 10 requests a second: a closed loop on them would have
    # sent 10 in the second, each timed at DELAY. The schedule sends all 20; the
    # last leaves the client's queue about 1 s late, and that wait counts.
    assert (result.due, result.succeeded, result.refused, result.lost) == (20, 20, 0, 0)
    assert slow_server.requests == 20 + 2  # and the first answer of each connection
    assert result.p50_ms >= DELAY * 1000
    assert result.max_ms >= 900
    assert result.lag_p99_ms >= 700


@pytest.mark.slow
@pytest.mark.parametrize("slow_server", [403], indirect=True)
def test_an_answer_other_than_200_is_not_a_success(slow_server: SlowServer) -> None:
    result = PacedClient(rate=50).run(f"http://127.0.0.1:{slow_server.port}/", {}, 1.0)

    assert (result.due, result.succeeded, result.refused) == (50, 0, 50)
    assert result.success_rate == 0
