import asyncio

from watcher.simulator.standalone import simulate

raise SystemExit(asyncio.run(simulate()))
