"""What the tests and the benchmark share: the SIPp driver, the callers' RTP reader, G.711, a tmpfs mount."""
