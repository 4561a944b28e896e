"""`clidash optimizer run`: the DQN optimizer against live telemetry.

Reads   clidash:telemetry (consumer group `optimizer`), clidash:policy:<service>,
        clidash:floor:<service>
Writes  clidash:policy:<service> (source "optimizer"), clidash:decisions (every
        change, and proposals the guardrails held back), clidash:policy-changed
Own keys (several optimizer processes share the stream; see sharing.py):
        clidash:optimizer:partial:<service>:<window>  HASH consumer -> partial window JSON,
                                                      `_sealed` -> the consumer that decided it
        clidash:optimizer:owner:<service>             STRING the consumer deciding the service (lease)

Modules: settings (configuration), aggregate (folding records, pure), intake
(the consumer group), sharing (partials and leases), decide (Controller in,
Redis out), metrics (Prometheus), runner (the loop).
"""
