#!/usr/bin/env python3
"""A small JSON-RPC client for ferrothin's socket, for the kernel lab.

spdk-rpc works against the daemon too (and the lab's docs show it), but
starting it costs seconds under software emulation; this client imports
nothing but the standard library, so scenarios can call it often.

Command line:

    labrpc.py SOCK METHOD [NAME=VALUE ...] [--get PATH]

VALUE is parsed as JSON when it parses (numbers, true, {"a": 1}) and kept
as a string otherwise. The result is printed as JSON, or with --get the
part at PATH (dot-separated keys and list indexes: `0.data.used`), strings
bare. A JSON-RPC error prints "METHOD: CODE MESSAGE" on stderr and exits 2.

As a module: `Rpc(sock).call(method, params)` raises RpcError.

    labrpc.py --serve REQ_FIFO RESP_FIFO

answers the same requests, one per line on REQ_FIFO with the command
line's words separated by \x1f, on RESP_FIFO: "0" or the exit status on
the first line, then what the command line would print (stdout, then
stderr). Starting Python costs seconds in the lab's guest (every file it
opens is a round trip to the host over 9p); one server started per boot
answers each call in milliseconds (lib.sh's `rpc` uses it).
"""

import json
import socket
import sys


class RpcError(Exception):
    def __init__(self, method, code, message):
        super().__init__("%s: %s %s" % (method, code, message))
        self.method = method
        self.code = code
        self.message = message


class Rpc:
    """One connection; requests one at a time (the daemon answers in order)."""

    def __init__(self, path, timeout=300.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.next_id = 1
        self.decoder = json.JSONDecoder()

    def close(self):
        self.sock.close()

    def call(self, method, params=None):
        req = {"jsonrpc": "2.0", "method": method, "id": self.next_id}
        self.next_id += 1
        if params is not None:
            req["params"] = params
        self.sock.sendall(json.dumps(req).encode())
        while True:
            text = self.buf.decode(errors="replace").lstrip()
            if text:
                try:
                    value, end = self.decoder.raw_decode(text)
                except ValueError:
                    value = None
                if value is not None:
                    self.buf = text[end:].encode()
                    break
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RpcError(method, "EOF", "connection closed without an answer")
            self.buf += chunk
        if "error" in value:
            e = value["error"]
            raise RpcError(method, e.get("code"), e.get("message"))
        return value.get("result")


def pick(value, path):
    for part in path.split(".") if path else []:
        if isinstance(value, list):
            value = value[int(part)]
        else:
            value = value[part]
    return value


def run(argv, out, err):
    """The command line's work; returns the exit status."""
    get = None
    if "--get" in argv:
        i = argv.index("--get")
        get = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    if len(argv) < 2:
        print(__doc__, file=err)
        return 64
    sock, method, pairs = argv[0], argv[1], argv[2:]
    params = None
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            print("labrpc: expected NAME=VALUE, got %r" % pair, file=err)
            return 64
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        params = params or {}
        params[name] = value
    try:
        c = Rpc(sock)
        try:
            result = c.call(method, params)
        finally:
            c.close()
    except (RpcError, OSError) as e:
        print(str(e), file=err)
        return 2
    if get is not None:
        try:
            result = pick(result, get)
        except (KeyError, IndexError, ValueError, TypeError):
            print("labrpc: no %s in %s" % (get, json.dumps(result)), file=err)
            return 3
    if isinstance(result, str):
        print(result, file=out)
    else:
        print(json.dumps(result, indent=1), file=out)
    return 0


def serve(req_path, resp_path):
    import io

    while True:
        with open(req_path) as req:
            lines = req.read().splitlines()
        for line in lines:
            if not line:
                continue
            out, err = io.StringIO(), io.StringIO()
            try:
                status = run(line.split("\x1f"), out, err)
            except Exception as e:  # a bug here must not stop the server
                print("labrpc: %r" % e, file=err)
                status = 70
            with open(resp_path, "w") as resp:
                resp.write("%d\n%s%s" % (status, out.getvalue(), err.getvalue()))


def main(argv):
    if argv[:1] == ["--serve"] and len(argv) == 3:
        serve(argv[1], argv[2])
        return 0
    return run(argv, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
