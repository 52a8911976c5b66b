"""The scheduler: a thread in `voms serve` that starts each housekeeping job on its
schedule. The jobs, their registry and runner are services
(:mod:`voms.services.housekeeping`)."""
