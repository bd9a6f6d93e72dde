"""End-to-end: a native POS payload pushed to the real server, through a window on the fake
clock, read back from the Sales Log, the sale detail and the Sales Report."""
