"""The store room: the handle callers use, the actor that owns the write
connections (group commit), the append requests, and the SQL of reads."""

from ._actor import WRITE_LANES, CommitHook
from ._handle import (
    READ_POOL_SIZE,
    RECONNECT_TIMEOUT,
    EventStore,
    check_connections,
    open_event_store,
    replica_list,
    run_event_store,
)
from ._queries import query_sql
from ._reads import Reads
from ._replicas import REPLICA_WAIT
from ._requests import BATCH_BYTES_CEILING, MAX_BATCH_BYTES, StoreStatistics, check_max_batch_bytes
from ._standby_checks import ReplicaState, ReplicaStatistics

__all__ = [
    "BATCH_BYTES_CEILING",
    "MAX_BATCH_BYTES",
    "READ_POOL_SIZE",
    "RECONNECT_TIMEOUT",
    "REPLICA_WAIT",
    "WRITE_LANES",
    "CommitHook",
    "EventStore",
    "Reads",
    "ReplicaState",
    "ReplicaStatistics",
    "StoreStatistics",
    "check_connections",
    "check_max_batch_bytes",
    "open_event_store",
    "query_sql",
    "replica_list",
    "run_event_store",
]
