"""adctl's subcommands, one module per area; each exports ``register(sub)``."""

from __future__ import annotations

from control.commands import api, batch, flow, models, observe

#: in the order ``adctl --help`` lists them
MODULES = (models, batch, flow, observe, api)
