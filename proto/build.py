"""Compile each .proto here into a .desc FileDescriptorSet (needs grpcio-tools, a test dependency).

Run: python proto/build.py    The .desc files are committed; tests check they are current.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def compile_proto(proto, out):
    from grpc_tools import protoc

    code = protoc.main(["protoc", f"-I{HERE}", f"--descriptor_set_out={out}", str(proto)])
    if code:
        raise SystemExit(f"protoc failed on {proto}")


if __name__ == "__main__":
    for proto in sorted(HERE.glob("*.proto")):
        compile_proto(proto, proto.with_suffix(".desc"))
        print(f"wrote {proto.with_suffix('.desc').name}", file=sys.stderr)
