"""Pure domain: models, enums, state machines and typed errors. Imports nothing of ours."""
