"""Video shards: `schema` (names and record format), `writing`, `reading`."""
