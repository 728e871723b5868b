"""Operating a run: checks before it starts, the cost estimate, process supervision and
the local HTTP servers' plumbing.
"""
