"""Transport: the lean front door (SSE, WebSocket, POST), the Quart apps, the hand-off to Hypercorn."""
