"""adctl's subcommands, one module per area; each exports ``register(sub)``."""

from __future__ import annotations

from control.commands import flow, models, observe

#: in the order ``adctl --help`` lists them
MODULES = (models, flow, observe)
