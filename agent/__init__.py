"""tablet-agent: the daemon and its client."""

import os

# gRPC's fork handlers crash children forked from a process with live gRPC threads (uvloop spawns
# compressors and xtrabackup with fork+exec); the agent never uses gRPC in a forked child.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

AGENT_VERSION = "0.1.0"
