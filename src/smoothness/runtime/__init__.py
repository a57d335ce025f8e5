"""What every layer runs on: counter-based random numbers (rng), the matmul precision of training and measuring
(precision), the device and its memory (devices), Ctrl-C / SIGTERM handling (interrupt), and the plain values
every layer shares: the integer check and a count in words (values)."""
