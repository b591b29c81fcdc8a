"""The fleet's shared view: tablet records and shard locks in etcd (Vitess's `etcd2` topology)."""
