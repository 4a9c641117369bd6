"""`sia-edge serve`'s streamed responses: a started generation drained in a worker thread into server-sent events."""

import asyncio
import json
import threading

from .serve_api import generation_failed
from .serve_logprobs import listed

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "context": "length", "cancelled": "stop"}


async def streaming_response(server, request, served, tokens, settings, chunk, first, objective=None, top_n=None):
    """`chunk(text, finish=None, result=None, events=())` makes one chunk (None: nothing to send yet); `events`
    are the listed tokens whose text it carries, for logprobs."""
    from fastapi.responses import StreamingResponse

    cancel = threading.Event()  # set when the client goes away
    stream = server.open_stream(served, tokens, settings, cancel, objective, top_n)
    server.counters.add(accepted=1, active=1)
    watcher = watch_disconnect(request, cancel)  # a client gone while its request waits in line: it leaves the line
    try:
        await asyncio.to_thread(server.start, stream)  # a slot, or 503 before any byte is sent
    finally:
        watcher.cancel()  # from here on the response notices a disconnect itself (stream_events)
    # The generation runs from here on whether or not the response body is ever read, so its slot and the
    # counters are always given back (a client gone before the body starts still gets cancelled below).
    queue = generate_in_thread(server, stream, cancel)
    return StreamingResponse(stream_events(queue, cancel, chunk, first), media_type="text/event-stream")


def watch_disconnect(request, cancel: threading.Event) -> asyncio.Task:
    """A task that sets `cancel` once the client has gone away (polled every 0.2 s); cancel the task when done."""
    async def watch():
        while not await request.is_disconnected():
            await asyncio.sleep(0.2)
        cancel.set()

    return asyncio.create_task(watch())


def generate_in_thread(server, stream, cancel: threading.Event) -> asyncio.Queue:
    """Drain the started stream in a worker thread; its events, then its result (or error), arrive on the queue."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def put(item):
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            cancel.set()

    def work():
        try:
            for event in stream:
                put(("event", event))
            put(("done", stream.result))
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop
            put(("error", exc))
        finally:
            server.finished(stream.result)

    threading.Thread(target=work, name="sia-edge-generate", daemon=True).start()
    return queue


async def stream_events(queue: asyncio.Queue, cancel: threading.Event, chunk, first):
    """Server-sent events: one chunk per piece of text, a final chunk with finish_reason + sia, [DONE]. A token
    whose text is not out yet (half a character, a possible stop string) waits for the chunk that carries it."""
    pending = []  # the tokens the next chunk carries
    try:
        if first is not None:
            yield sse(first)
        while True:
            kind, value = await queue.get()
            if kind == "event":
                if listed(value):
                    pending.append(value)
                piece = chunk(value.text, events=pending) if value.text else None
                if piece is not None:
                    yield sse(piece)
                    pending = []
            elif kind == "done":
                yield sse(chunk("", FINISH_REASONS[value.stop_reason], value, events=pending))
                yield "data: [DONE]\n\n"
                return
            else:
                yield sse(generation_failed(value).body())
                return
    finally:  # also when the client went away: Starlette closes this generator
        cancel.set()


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
