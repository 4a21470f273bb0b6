"""What the tests and the benchmark share: the SIPp driver, the callers' RTP reader and G.711."""
