"""Generated stubs of protos/zk0/v1/federation.proto; regenerate with `python -m zk0.protogen`."""
