"""The domain: comments, ids, errors, identity, settings and the ports (Protocols) every layer above programs against."""
