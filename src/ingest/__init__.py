"""The stateless comment service: validate, rate-limit, id, store, publish."""
