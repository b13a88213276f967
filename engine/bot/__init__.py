"""The virtual agent: flows, what callers mean, the conversation, hand-off."""
