"""Generated gRPC API types of prefmine (from protos/); see cluster/gen_protos.py."""
