"""The exchange simulator: configuration (`config`), the TCP server (`server`), packet pacing
(`pacing`), the frame store clients are served and retransmitted from (`frame_store`), and where
the messages come from: the order-book-consistent synthetic day (`orderflow`), NASDAQ file replay
(`replay`) and random messages for tests and benchmarks (`synthetic`)."""
