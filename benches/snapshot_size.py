"""How big ``snapshot.json`` is: ``python -m benches.snapshot_size [--text-chars N]``.

Starts a ``livecomments serve`` of its own, posts ``--comments`` comments of
``--text-chars`` characters (with a client id, by a named user), and prints the size of
the video's snapshot, raw and gzipped. docs/scaling.md uses it for the CDN lines. (The
texts repeat one phrase, so the gzip figure is a lower bound of what real text costs.)
"""

from __future__ import annotations

import argparse
import gzip

import httpx
from tests.support.server import ServerProcess


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comments", type=int, default=200)
    ap.add_argument("--text-chars", type=int, default=120)
    args = ap.parse_args()
    srv = ServerProcess({"LIVECOMMENTS_RATE_LIMIT": "100000/1s"}).start()
    try:
        token = srv.token("u1", name="Alice")
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            for i in range(args.comments):
                text = ("gg what a goal " * (args.text_chars // 15 + 1))[: args.text_chars - 6] + f" {i:05d}"
                c.post("/v1/videos/snap/comments", json={"text": text, "client_id": f"c-{i:06d}"},
                       headers={"Authorization": f"Bearer {token}"})
            body = c.get("/v1/videos/snap/snapshot.json").content
        n = len(httpx.Response(200, content=body).json()["comments"])
        print(f"{n} comments of {args.text_chars} characters: snapshot {len(body):,} bytes "
              f"({len(body) / n:.0f} per comment), gzip {len(gzip.compress(body)):,} bytes")
    finally:
        srv.close()


if __name__ == "__main__":
    main()
