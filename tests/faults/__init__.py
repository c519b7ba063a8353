"""Infrastructure of the fault suite (issue 9): real processes, real brokers, a link we control.

- `proxy.TcpProxy`: a TCP proxy on 127.0.0.1 between the handler and the exchange simulator
  that can cut the link (also in the middle of a frame, after an exact byte count), pause it,
  drop or garble bytes, and counts what it forwards.
- `processes`: `feedhandler run` / `feedhandler simulate` as child processes with their output
  in files, kill -9, waiting for an exit status, peak RSS.
- `brokers.KafkaNodes`: a single node or a 3-node cluster of our own through scripts/kafka.sh
  (its own ports and state directory, never the shared broker), with kill, restart keeping
  the data, pause, partition leaders and the active controller.
- `checker`: reads every topic the handler wrote and checks by sequence number that every
  tick is there exactly once and in feed order per symbol within each partition.
"""
