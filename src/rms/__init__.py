"""The stateful realtime servers: rooms of viewers and the lean stream path."""
