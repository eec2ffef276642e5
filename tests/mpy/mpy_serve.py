"""JSON-lines service loop shared by MicroPython (``serve``) and CPython (``call``).

Each stdin line is ``[op, *args]``; each reply line is the handler's JSON result, or
``{"exc": <exception class name>, "msg": <str(exc)>}`` if it raised, so one bad vector never ends
the batch. MicroPython-compatible: no typing, f-strings avoided for older ports.
"""

import json
import sys


def call(ops, req):
    try:
        return ops[req[0]](*req[1:])
    except Exception as e:  # noqa: BLE001 - the exception itself is the conformance result
        return {"exc": type(e).__name__, "msg": str(e)}


def serve(ops):
    write = sys.stdout.write
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if line:
            write(json.dumps(call(ops, json.loads(line))))
            write("\n")
