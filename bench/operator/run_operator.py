"""``mftctl operator`` with a request counter, for bench_scale.py.

Counts every HTTP request the operator's Kubernetes client (urllib3: all reconcile reads and
writes) and kopf (aiohttp: watch streams) send, by method and resource, and writes them as
JSON to ``$MFT_BENCH_COUNTS`` every second and at exit. The operator itself is unchanged:
this only wraps its entry point (profiles are taken from outside with py-spy).
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import re
import signal
import sys
import threading

COUNTS: collections.Counter = collections.Counter()
_LOCK = threading.Lock()
_RESOURCE = re.compile(r"/(?:api/v1|apis/[^/]+/[^/]+)(?:/namespaces/[^/]+)?/([a-z]+)(?:/[^/?]+)?(?:/([a-z]+))?")


def _key(method: str, url: str, watch: bool = False) -> str:
    path = url.split("?", 1)[0]
    match = _RESOURCE.search(path)
    resource = match.group(1) if match else path
    if match and match.group(2):
        resource += "/" + match.group(2)
    verb = method.upper()
    if verb == "GET" and ("watch=" in url or watch):
        verb = "WATCH"
    return f"{verb} {resource}"


def _count(key: str) -> None:
    with _LOCK:
        COUNTS[key] += 1


def _install() -> None:
    import urllib3.connectionpool

    original = urllib3.connectionpool.HTTPConnectionPool.urlopen

    def urlopen(self, method, url, *args, **kwargs):
        _count(_key(method, url))
        return original(self, method, url, *args, **kwargs)

    urllib3.connectionpool.HTTPConnectionPool.urlopen = urlopen

    import aiohttp

    original_request = aiohttp.ClientSession._request

    async def _request(self, method, url, *args, **kwargs):
        _count(_key(method, str(url), watch="watch" in str(kwargs.get("params") or "")))
        return await original_request(self, method, url, *args, **kwargs)

    aiohttp.ClientSession._request = _request


def _dump() -> None:
    path = os.environ.get("MFT_BENCH_COUNTS")
    if not path:
        return
    with _LOCK:
        data = dict(COUNTS)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


def _dumper() -> None:
    import time

    while True:
        time.sleep(1.0)
        _dump()


def main() -> int:
    _install()
    atexit.register(_dump)
    threading.Thread(target=_dumper, daemon=True).start()

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    from mft_operator.cli import main as cli_main

    try:
        return cli_main(sys.argv[1:])
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
