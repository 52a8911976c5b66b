"""Promotions: loyalty plans that count a subscriber's recharges over a window and
reward a target reached (docs/promotions.md).

The package, in the order a plan lives:

- :mod:`.plans`: create, read and change plans (operators);
- :mod:`.cache`: the running plans of a provider, cached per process for the redemption;
- :mod:`.counting`: the redemption's step: the plans that apply counted by one upsert
  (count plans before the account is read, value plans after the credit), and the
  rewards a target reached gives, in the redemption's own unit of work;
- :mod:`.counters`: a subscriber's counters as care sees them.
"""
