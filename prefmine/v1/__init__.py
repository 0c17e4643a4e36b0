"""Generated gRPC API types of prefmine (from protos/); see prefmine/cli/gen_protos.py."""
