"""The imgcls.v1 protocol's messages <-> engine types, shared by its gRPC door and its JSON-over-HTTP door.

Protobuf messages (imgcls.v1), no transport: no grpc, no HTTP.
"""
