"""The model registry: model versions, which one is active, promotion through the held-out gate,
rollback and their decisions — below analysis, which asks it for the active model."""
