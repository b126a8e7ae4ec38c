"""A plain asyncio service watched by loopwatch: a blocking call, then the same call offloaded."""

import asyncio
import logging
import time

import loopwatch

logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # the app's own format


def slow_lookup(key: str) -> str:
    time.sleep(0.3)  # a blocking client call, e.g. requests.get
    return key.upper()


async def main() -> None:
    async with loopwatch.watch(stall_threshold=0.1):
        slow_lookup("on the loop")  # logs a `stall` naming the line above, cause "wait"
        print(await loopwatch.run_sync(slow_lookup, "off the loop"))  # no stall


asyncio.run(main())
