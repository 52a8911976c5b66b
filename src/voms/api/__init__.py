"""REST/JSON interface under /api/v1: translates HTTP to service calls."""
