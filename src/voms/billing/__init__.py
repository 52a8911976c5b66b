"""Billing engines: the built-in wallet and adapters to external charging systems."""
