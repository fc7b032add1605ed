"""Moderation: automod's rules (sans-IO), the classifier hook and the asynchronous pipeline."""
