"""Driver contracts of the agent (one per concern) and their implementations and fakes."""
