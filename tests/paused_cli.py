"""The ms2gguf command line, stopped at a chosen point so that a test can act while it is mid-conversion.

    python tests/paused_cli.py [--named-temp] --pause tensor:N|publish --ready FILE [--go FILE] -- ARGS...

At the pause point (before the N-th output tensor is written, counting from 0, or just before the finished files
are published) it creates READY and waits until GO exists (without --go: until it is killed), then goes on as
``ms2gguf ARGS...`` would. ``--named-temp`` makes it use the ``.OUT.<host>.<pid>.tmp`` files of filesystems
without O_TMPFILE. The pause is a sleep, so signals reach it as they would reach a busy conversion.
"""

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gguf_out import cli, conversion, publish


def pause(ready, go):
    Path(ready).touch()
    while go is None or not os.path.exists(go):
        time.sleep(0.01)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--named-temp", action="store_true")
    p.add_argument("--pause", required=True)
    p.add_argument("--ready", required=True)
    p.add_argument("--go")
    p.add_argument("args", nargs=argparse.REMAINDER)
    opts = p.parse_args()
    args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
    # as if started from a terminal, whatever the test runner ignores (nohup, background jobs)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    if opts.named_temp:
        publish.USE_TMPFILE = False
    if opts.pause == "publish":
        real_publish = conversion._publish

        def paused_publish(outputs):
            pause(opts.ready, opts.go)
            real_publish(outputs)

        conversion._publish = paused_publish
    else:
        at = int(opts.pause.removeprefix("tensor:"))
        real_write, calls = conversion._write_tensor, []

        def paused_write(*a):
            if len(calls) == at:
                pause(opts.ready, opts.go)
            calls.append(1)
            real_write(*a)

        conversion._write_tensor = paused_write
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
