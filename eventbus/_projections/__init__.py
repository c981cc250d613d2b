"""The projections room: definitions, the runner and its manager, applying a
batch, and the blue-green rebuild."""

from ._definition import (
    Projection,
    ProjectionConfig,
    ProjectionState,
    ProjectionStatus,
    Transaction,
    create_projection_config,
)
from ._manager import ProjectionManager, start_projection_listener
from ._supervisor import RestartPolicy

__all__ = [
    "Projection",
    "ProjectionConfig",
    "ProjectionManager",
    "ProjectionState",
    "ProjectionStatus",
    "RestartPolicy",
    "Transaction",
    "create_projection_config",
    "start_projection_listener",
]
