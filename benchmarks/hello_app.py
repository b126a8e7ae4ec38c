"""Hello-world FastAPI apps for benchmarks/asgi_overhead.py: ``plain``, and ``watched``.

``watched`` is the same app wrapped in loopwatch's middleware, as a user would add it.
"""

from fastapi import FastAPI

from loopwatch.asgi import LoopwatchMiddleware

plain = FastAPI()


@plain.get("/")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


watched = LoopwatchMiddleware(plain)
