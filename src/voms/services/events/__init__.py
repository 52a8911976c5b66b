"""Events: what happened, told to the systems around us (docs/events.md).

The package, in the order an event travels through it:

- :mod:`.outbox`: :func:`emit` writes an event into ``event_outbox`` in the transaction
  that causes it (through the unit of work's deferred writes, so a redemption pays no
  extra round trip), and the few hooks the services call;
- :mod:`.cloudevents`: the CloudEvents 1.0 body of an event and the webhook signature;
- :mod:`.destinations`: webhooks added by admins, NATS and RabbitMQ from the
  environment, each destination's deliveries (dead letters included) and replays;
- :mod:`.transports`: the senders: signed HTTP POST (httpx), NATS (nats-py), RabbitMQ
  (aio-pika);
- :mod:`.relay`: the relay, inside `voms serve` or on its own (`voms events relay`): one
  at a time holds the lease, fans new events out into deliveries and sends each
  destination's deliveries in order, at least once, with backoff, dead-lettering those
  that fail for a day.
"""

from voms.services.events.outbox import EVENT_TYPES, emit

__all__ = ["EVENT_TYPES", "emit"]
