"""livecomments: the comment stream beside a live video, on Trio."""

__version__ = "0.1.0"
