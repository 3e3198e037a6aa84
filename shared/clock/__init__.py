"""Time and randomness of a run: seed purposes, steps and batches, the β and GRL-α schedules."""
