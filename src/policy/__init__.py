"""Sans-IO policies besides fan-out pressure: rate-limit math, publish order, the
reorder window, write sharding, retry back-off. Nothing here does I/O or reads a clock.
"""
