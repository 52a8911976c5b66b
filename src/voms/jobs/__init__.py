"""Housekeeping jobs (one function each), their registry, runner and scheduler."""
