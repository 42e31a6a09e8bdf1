"""Reading wdstream shards into training: the epoch planner (pure arithmetic) and its parts."""
