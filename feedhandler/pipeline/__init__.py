"""The handler pipeline: frames in, parallel nogil decode, in-order publishing (`handler`)."""
