"""Vendored protobuf schemas (.proto) and their compiled descriptor sets (.desc).

Installed as ``msckpt.proto``. Rebuild the .desc files after editing a .proto with
``python proto/build.py`` (needs grpcio-tools); nothing needs protoc at install or run time.
"""
