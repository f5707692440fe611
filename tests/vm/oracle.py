#!/usr/bin/env python3
"""dm-thin as an oracle for ferrothin (run inside the kernel lab's guest).

For each seed, a random sequence of pool operations (create a thin device,
snapshot any device at any depth, writes of various sizes and offsets,
partial blocks included, discards, deletes, deleting a device that does not
exist, reserve/release of the metadata snapshot, set_transaction_id) runs
twice: on the kernel's dm-thin (dmsetup on loop devices) and on ferrothin
(JSON-RPC, devices through the kernel's NBD client), with the same data
block size (64 KiB) and zeroing (on). Then, for every seed:

- every live device reads the same on both, and what a plain model of the
  operations says (MD5 of the whole device);
- both pools report the same used data blocks;
- Debian's thin_check accepts both metadata devices;
- Debian's thin_ls gives the same mapped, exclusive and shared blocks per
  device on both metadata devices;
- Debian's thin_dump of both, made canonical, is the same: superblock
  time, transaction id and sizes; per device its id, mapped blocks,
  creation and snapshot times; which virtual blocks are mapped, with their
  time stamps; and which (device, virtual block) pairs share a data block.
  Data block numbers themselves may differ. The same for the metadata
  snapshot when one is held at the end.

    oracle.py --sock FT_SOCK --dir DIR --seeds 1-20 [--ops 24]

DIR holds the pools' files (not tmpfs: see fs-on-tmpfs). Prints one line
per seed; on a difference, the operations and what differed. Exit status
0 when every seed agreed.
"""

import argparse
import collections
import errno
import fcntl
import hashlib
import json
import mmap
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labrpc import Rpc, RpcError  # noqa: E402

BLOCK = 64 << 10  # data block size, bytes
BLOCK_SECTORS = BLOCK // 512
DEV_BYTES = 3 << 20  # every thin device
DATA_BYTES = 32 << 20  # data device: 512 blocks
META_BYTES = 8 << 20
MAX_LIVE = 8
PAGE = 4096
BLKDISCARD = 0x1277


class Mismatch(Exception):
    pass


# --- the operations ---------------------------------------------------------


def generate(seed, nops):
    """A list of operations; every one valid for the state it meets, except
    delete_missing, which both sides must refuse."""
    r = random.Random(seed)
    ops = []
    live = []
    used_ids = set()
    tid = 0
    msnap = False

    def new_id():
        while True:
            i = r.choice([r.randrange(16), r.randrange(1 << 24)])
            if i not in used_ids:
                used_ids.add(i)
                return i

    for n in range(nops):
        kinds = ["write"] * 10 + ["discard"] * 3
        if len(live) < MAX_LIVE:
            kinds += ["create"] * 2 + ["snap"] * 3
        if len(live) > 1:
            kinds += ["delete"]
        kinds += ["delete_missing", "set_tid", "reserve" if not msnap else "release"]
        kind = r.choice(kinds) if live else "create"
        if kind in ("snap", "write", "discard", "delete") and not live:
            kind = "create"
        if kind == "create":
            i = new_id()
            live.append(i)
            ops.append(("create", i))
        elif kind == "snap":
            i = new_id()
            ops.append(("snap", i, r.choice(live)))
            live.append(i)
        elif kind == "write":
            size = r.choice([PAGE, 2 * PAGE, 15 * PAGE, BLOCK, BLOCK + PAGE, 2 * BLOCK, 200 << 10])
            off = r.randrange(0, (DEV_BYTES - size) // PAGE + 1) * PAGE
            if r.random() < 0.3:  # block-aligned start
                off = (off // BLOCK) * BLOCK
            # A quarter of the writes are followed by a flush (a commit).
            ops.append(("write", r.choice(live), off, size, "%d:%d" % (seed, n), r.random() < 0.25))
        elif kind == "discard":
            nb = r.choice([1, 1, 2, 5])
            b = r.randrange(0, DEV_BYTES // BLOCK - nb + 1)
            ops.append(("discard", r.choice(live), b * BLOCK, nb * BLOCK))
        elif kind == "delete":
            i = r.choice(live)
            live.remove(i)
            ops.append(("delete", i))
        elif kind == "delete_missing":
            ops.append(("delete_missing", new_id()))
        elif kind == "set_tid":
            ops.append(("set_tid", tid, tid + 1 + r.randrange(3)))
            tid = ops[-1][2]
        elif kind == "reserve":
            msnap = True
            ops.append(("reserve",))
        elif kind == "release":
            msnap = False
            ops.append(("release",))
    return ops


def data_for(tag, size):
    return random.Random(tag).randbytes(size)


def model(ops):
    """Device contents as the operations define them."""
    devs = {}
    for op in ops:
        if op[0] == "create":
            devs[op[1]] = bytearray(DEV_BYTES)
        elif op[0] == "snap":
            devs[op[1]] = bytearray(devs[op[2]])
        elif op[0] == "write":
            _, i, off, size, tag, _flush = op
            devs[i][off:off + size] = data_for(tag, size)
        elif op[0] == "discard":
            _, i, off, size = op
            devs[i][off:off + size] = bytes(size)
        elif op[0] == "delete":
            del devs[op[1]]
    return {i: hashlib.md5(d).hexdigest() for i, d in devs.items()}


# --- block device I/O ---------------------------------------------------------

_buf = mmap.mmap(-1, 1 << 20)  # page-aligned, for O_DIRECT


def dev_write(path, off, data, flush):
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        _buf[:len(data)] = data
        n = os.pwritev(fd, [memoryview(_buf)[:len(data)]], off)
        if n != len(data):
            raise OSError("short write to %s: %d of %d" % (path, n, len(data)))
        if flush:
            os.fsync(fd)
    finally:
        os.close(fd)


def dev_discard(path, off, size):
    fd = os.open(path, os.O_WRONLY)
    try:
        fcntl.ioctl(fd, BLKDISCARD, struct.pack("QQ", off, size))
    finally:
        os.close(fd)


def dev_md5(path):
    h = hashlib.md5()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        off = 0
        while off < DEV_BYTES:
            n = os.preadv(fd, [memoryview(_buf)[:min(1 << 20, DEV_BYTES - off)]], off)
            if n <= 0:
                raise OSError("short read from %s at %d" % (path, off))
            h.update(_buf[:n])
            off += n
    finally:
        os.close(fd)
    return h.hexdigest()


def sh(*cmd, ok=True):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if ok and p.returncode != 0:
        raise RuntimeError("%s: status %d: %s%s" % (" ".join(cmd), p.returncode, p.stdout, p.stderr))
    return p


def wait_size(path, want, secs=30):
    until = time.monotonic() + secs
    while True:
        try:
            with open(path, "rb") as f:
                if f.seek(0, 2) == want:
                    return
        except OSError:
            pass
        if time.monotonic() > until:
            raise RuntimeError("%s did not reach %d bytes" % (path, want))
        time.sleep(0.05)


# --- device-mapper and loop devices, by ioctl ---------------------------------
#
# dmsetup and losetup cost half a second each in the guest (every program is
# loaded over 9p); the same ioctls from this process cost microseconds.

DM_IOCTL_SIZE = 312  # struct dm_ioctl
DM_SUSPEND_FLAG = 1 << 1
DM_NOFLUSH_FLAG = 1 << 11
DM_CMDS = {"create": 3, "remove": 4, "suspend": 6, "load": 9, "status": 12, "message": 14}


def _dm(cmd, name, flags=0, data=b"", target_count=0, out_size=0):
    size = DM_IOCTL_SIZE + max(len(data), out_size)
    hdr = struct.pack("=3I6IIQ128s129s7x", 4, 0, 0, size, DM_IOCTL_SIZE, target_count, 0, flags, 0, 0, 0,
                      name.encode(), b"")
    buf = bytearray(hdr + data + bytes(size - DM_IOCTL_SIZE - len(data)))
    req = (3 << 30) | (DM_IOCTL_SIZE << 16) | (0xFD << 8) | DM_CMDS[cmd]
    with open("/dev/mapper/control", "r+b", buffering=0) as ctl:
        fcntl.ioctl(ctl, req, buf, True)
    return buf


def dm_create(name, sectors, target, params):
    """Creates device NAME with one target and resumes it; returns its path
    (/dev/dm-N, which devtmpfs makes) and "MAJOR:MINOR" (no udev here to
    make /dev/mapper/NAME)."""
    buf = _dm("create", name)
    dev = struct.unpack_from("=Q", buf, 40)[0]
    major, minor = (dev >> 8) & 0xFFF, (dev & 0xFF) | ((dev >> 12) & ~0xFF)
    spec = struct.pack("=QQiI16s", 0, sectors, 0, 0, target.encode()) + params.encode() + b"\0"
    spec += bytes(-len(spec) % 8)
    try:
        _dm("load", name, data=spec, target_count=1)
        _dm("suspend", name)  # without DM_SUSPEND_FLAG: resume, the loaded table goes live
    except OSError:
        _dm("remove", name)
        raise
    path = "/dev/dm-%d" % minor
    until = time.monotonic() + 10
    while not os.path.exists(path) and time.monotonic() < until:
        time.sleep(0.01)
    return path, "%d:%d" % (major, minor)


def dm_reload(name, sectors, target, params):
    """Loads a new table for NAME and makes it live: the resume suspends
    without flushing first, so bios the target holds (a pool out of data
    space queues them) wait for the new table instead of failing."""
    spec = struct.pack("=QQiI16s", 0, sectors, 0, 0, target.encode()) + params.encode() + b"\0"
    spec += bytes(-len(spec) % 8)
    _dm("load", name, data=spec, target_count=1)
    _dm("suspend", name, flags=DM_NOFLUSH_FLAG)


def dm_remove(name):
    _dm("remove", name)


def dm_suspend(name, suspend=True):
    _dm("suspend", name, flags=DM_SUSPEND_FLAG if suspend else 0)


def dm_message(name, text):
    """Raises OSError when the target refuses the message."""
    _dm("message", name, data=struct.pack("=Q", 0) + text.encode() + b"\0")


def dm_status(name):
    buf = _dm("status", name, out_size=4096)
    start = struct.unpack_from("=I", buf, 16)[0]
    return bytes(buf[start + 40:]).split(b"\0", 1)[0].decode()


LOOP_SET_FD, LOOP_CLR_FD, LOOP_SET_CAPACITY, LOOP_CTL_GET_FREE = 0x4C00, 0x4C01, 0x4C07, 0x4C82


def loop_attach(path):
    with open("/dev/loop-control", "r+b", buffering=0) as ctl:
        n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
    dev = "/dev/loop%d" % n
    fd = os.open(path, os.O_RDWR)
    try:
        with open(dev, "r+b", buffering=0) as lo:
            fcntl.ioctl(lo, LOOP_SET_FD, fd)
    finally:
        os.close(fd)
    return dev


def loop_detach(dev):
    with open(dev, "r+b", buffering=0) as lo:
        fcntl.ioctl(lo, LOOP_CLR_FD)


# --- the kernel's NBD client, set up by netlink -------------------------------
#
# What nbd-client does, without starting a program: the NBD handshake
# (fixed newstyle, NBD_OPT_GO) on a TCP socket, then the socket handed to
# the kernel's nbd driver over generic netlink (NBD_CMD_CONNECT), which does
# every read and write from then on; NBD_CMD_DISCONNECT ends it.

NBD_OPT_GO, NBD_REP_ACK, NBD_REP_INFO, NBD_INFO_EXPORT = 7, 1, 3, 0
NBD_CMD_CONNECT, NBD_CMD_DISCONNECT = 1, 2
NBD_ATTR_INDEX, NBD_ATTR_SIZE_BYTES, NBD_ATTR_BLOCK_SIZE_BYTES = 1, 2, 3
NBD_ATTR_SERVER_FLAGS, NBD_ATTR_SOCKETS, NBD_SOCK_ITEM, NBD_SOCK_FD = 5, 7, 1, 1


def _recv_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise OSError("NBD server closed the connection in the handshake")
        out += chunk
    return out


def nbd_handshake(host, port, export):
    """A connected socket ready for transmission, the size and the flags."""
    s = socket.create_connection((host, int(port)))
    hdr = _recv_exact(s, 18)
    if hdr[:16] != b"NBDMAGICIHAVEOPT":
        raise OSError("not a newstyle NBD server: %r" % hdr)
    server = struct.unpack(">H", hdr[16:])[0]
    s.sendall(struct.pack(">I", 1 | (server & 2)))  # FIXED_NEWSTYLE, NO_ZEROES if offered
    name = export.encode()
    payload = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    s.sendall(b"IHAVEOPT" + struct.pack(">II", NBD_OPT_GO, len(payload)) + payload)
    size = flags = None
    while True:
        _magic, _opt, rtype, rlen = struct.unpack(">QIII", _recv_exact(s, 20))
        data = _recv_exact(s, rlen)
        if rtype == NBD_REP_INFO and struct.unpack(">H", data[:2])[0] == NBD_INFO_EXPORT:
            size, flags = struct.unpack(">QH", data[2:12])
        elif rtype == NBD_REP_ACK:
            break
        elif rtype & 0x80000000:
            raise OSError("NBD_OPT_GO %s refused: %#x %r" % (export, rtype, data))
    if size is None:
        raise OSError("NBD_OPT_GO %s: no export info" % export)
    return s, size, flags


def _nla(kind, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + bytes(-n % 4)


def _nla_parse(data):
    out, off = {}, 0
    while off + 4 <= len(data):
        n, kind = struct.unpack_from("=HH", data, off)
        out[kind & 0x3FFF] = data[off + 4:off + n]
        off += (n + 3) & ~3
    return out


class Genl:
    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)  # NETLINK_GENERIC
        self.sock.bind((0, 0))
        self.seq = 0
        self.nbd = None

    def request(self, family, cmd, attrs):
        """Sends one request with NLM_F_ACK; returns the replies' attributes."""
        self.seq += 1
        body = struct.pack("=BBH", cmd, 1, 0) + attrs
        self.sock.send(struct.pack("=IHHII", 16 + len(body), family, 1 | 4, self.seq, 0) + body)
        replies = []
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off < len(data):
                n, kind = struct.unpack_from("=IH", data, off)
                if kind == 2:  # NLMSG_ERROR: 0 is the ACK
                    err = struct.unpack_from("=i", data, off + 16)[0]
                    if err:
                        raise OSError(-err, "netlink: %s" % os.strerror(-err))
                    return replies
                replies.append(_nla_parse(data[off + 20:off + n]))
                off += (n + 3) & ~3

    def nbd_family(self):
        if self.nbd is None:
            r = self.request(0x10, 3, _nla(2, b"nbd\0"))  # GENL_ID_CTRL, CTRL_CMD_GETFAMILY, FAMILY_NAME
            self.nbd = struct.unpack("=H", r[0][1][:2])[0]  # CTRL_ATTR_FAMILY_ID
        return self.nbd

    def nbd_connect(self, index, sock, size, flags):
        attrs = (_nla(NBD_ATTR_INDEX, struct.pack("=I", index))
                 + _nla(NBD_ATTR_SIZE_BYTES, struct.pack("=Q", size))
                 + _nla(NBD_ATTR_BLOCK_SIZE_BYTES, struct.pack("=Q", 4096))
                 + _nla(NBD_ATTR_SERVER_FLAGS, struct.pack("=Q", flags))
                 + _nla(NBD_ATTR_SOCKETS, _nla(NBD_SOCK_ITEM, _nla(NBD_SOCK_FD, struct.pack("=I", sock.fileno())))))
        self.request(self.nbd_family(), NBD_CMD_CONNECT, attrs)

    def nbd_disconnect(self, index):
        self.request(self.nbd_family(), NBD_CMD_DISCONNECT, _nla(NBD_ATTR_INDEX, struct.pack("=I", index)))


GENL = None


def nbd_attach(index, host, port, export):
    global GENL
    GENL = GENL or Genl()
    sock, size, flags = nbd_handshake(host, port, export)
    try:
        GENL.nbd_connect(index, sock, size, flags)
    finally:
        sock.close()  # the kernel holds its own reference
    return size


def nbd_detach(index):
    GENL.nbd_disconnect(index)


# --- the two sides ------------------------------------------------------------


class Kernel:
    """dm-thin on loop devices."""

    def __init__(self, d, seed, features="0"):
        self.meta = os.path.join(d, "k%d.meta" % seed)
        self.data = os.path.join(d, "k%d.data" % seed)
        for p, size in ((self.meta, META_BYTES), (self.data, DATA_BYTES)):
            with open(p, "wb") as f:
                f.truncate(size)
        self.pool = "k%d" % seed
        self.loops = []
        self.paths = {}
        self.pool_made = False
        for p in (self.meta, self.data):
            self.loops.append(loop_attach(p))
        self.params = "%s %s %d 0 %s" % (self.loops[0], self.loops[1], BLOCK_SECTORS, features)
        _, self.pool_dev = dm_create(self.pool, DATA_BYTES // 512, "thin-pool", self.params)
        self.pool_made = True

    def grow(self, data_bytes):
        """What lvextend of a pool does: a bigger data device, the pool's
        table reloaded with its size."""
        os.truncate(self.data, data_bytes)
        with open(self.loops[1], "r+b", buffering=0) as lo:
            fcntl.ioctl(lo, LOOP_SET_CAPACITY, 0)
        dm_reload(self.pool, data_bytes // 512, "thin-pool", self.params)

    def name(self, i):
        return "%s-%d" % (self.pool, i)

    def path(self, i):
        return self.paths[i]

    def msg(self, text):
        dm_message(self.pool, text)

    def activate(self, i):
        self.paths[i], _ = dm_create(self.name(i), DEV_BYTES // 512, "thin", "%s %d" % (self.pool_dev, i))

    def create(self, i):
        self.msg("create_thin %d" % i)
        self.activate(i)

    def snap(self, i, origin):
        dm_suspend(self.name(origin))
        try:
            self.msg("create_snap %d %d" % (i, origin))
        finally:
            dm_suspend(self.name(origin), False)
        self.activate(i)

    def delete(self, i):
        dm_remove(self.name(i))
        del self.paths[i]
        self.msg("delete %d" % i)

    def delete_missing(self, i):
        try:
            self.msg("delete %d" % i)
        except OSError:
            return True
        return False

    def set_tid(self, cur, new):
        self.msg("set_transaction_id %d %d" % (cur, new))

    def reserve(self):
        self.msg("reserve_metadata_snap")

    def release(self):
        self.msg("release_metadata_snap")

    def used(self):
        # TRANSACTION META_USED/META_TOTAL DATA_USED/DATA_TOTAL ...
        return int(dm_status(self.pool).split()[2].split("/")[0])

    def mode(self):
        # ... HELD_ROOT rw|ro|out_of_data_space ...
        m = dm_status(self.pool).split()[4]
        return {"rw": "write", "ro": "read_only"}.get(m, m)

    def error_if_no_space(self):
        # ... MODE [no_]discard_passdown error_if_no_space|queue_if_no_space ...
        return dm_status(self.pool).split()[6] == "error_if_no_space"

    def close(self):
        """Removes everything; the metadata is committed."""
        for i in sorted(self.paths):
            try:
                dm_remove(self.name(i))
            except OSError:
                pass
        self.paths.clear()
        if self.pool_made:
            self.pool_made = False
            try:
                dm_remove(self.pool)
            except OSError:
                pass
        for lo in self.loops:
            try:
                loop_detach(lo)
            except OSError:
                pass
        self.loops = []


NEXT_NBD = 0


class Ferro:
    """ferrothin through JSON-RPC and the kernel's NBD client; one daemon
    for every seed, a pool per seed."""

    def __init__(self, rpc, addr, d, seed, options=None):
        self.rpc = rpc
        self.addr = addr
        self.seed = seed
        self.pool = "f%d" % seed
        self.meta = os.path.join(d, "f%d.meta" % seed)
        self.data = os.path.join(d, "f%d.data" % seed)
        for p, size in ((self.meta, META_BYTES), (self.data, DATA_BYTES)):
            with open(p, "wb") as f:
                f.truncate(size)
        rpc.call("bdev_uring_create", {"name": self.pool + "M", "filename": self.meta})
        rpc.call("bdev_uring_create", {"name": self.pool + "D", "filename": self.data})
        rpc.call("bdev_thin_pool_create", {
            "name": self.pool, "metadata_bdev": self.pool + "M", "data_bdev": self.pool + "D",
            "block_size": BLOCK, "zero_new_blocks": True, "low_water_mark_blocks": 0, **(options or {})})
        self.nbd = {}  # dev id -> nbd index
        self.closed = False

    def name(self, i):
        return "%s-%d" % (self.pool, i)

    def path(self, i):
        return "/dev/nbd%d" % self.nbd[i]

    def attach(self, i):
        name = self.name(i)
        self.rpc.call("nbd_start_disk", {"bdev_name": name, "nbd_device": self.addr, "export_name": name})
        # Round robin over the 16 devices: one just disconnected may still
        # be held a moment (NBD_CMD_CONNECT answers EBUSY then).
        global NEXT_NBD
        taken = set(self.nbd.values())
        host, port = self.addr.rsplit(":", 1)
        for _ in range(32):
            n = NEXT_NBD
            NEXT_NBD = (NEXT_NBD + 1) % 16
            if n in taken:
                continue
            try:
                nbd_attach(n, host, port, name)
                break
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                time.sleep(0.1)
        else:
            raise OSError(errno.EBUSY, "no free /dev/nbdN for %s" % name)
        self.nbd[i] = n
        wait_size(self.path(i), DEV_BYTES)

    def detach(self, i):
        n = self.nbd.pop(i)
        nbd_detach(n)
        wait_size("/dev/nbd%d" % n, 0)
        self.rpc.call("nbd_stop_disk", {"nbd_device": self.addr, "export_name": self.name(i)})

    def create(self, i):
        self.rpc.call("bdev_thin_create", {"pool": self.pool, "name": self.name(i),
                                           "size_in_mib": DEV_BYTES >> 20, "dev_id": i})
        self.attach(i)

    def snap(self, i, origin):
        self.rpc.call("bdev_thin_snapshot", {"origin": self.name(origin), "name": self.name(i), "dev_id": i})
        self.attach(i)

    def delete(self, i):
        self.detach(i)
        self.rpc.call("bdev_thin_delete", {"name": self.name(i)})

    def delete_missing(self, i):
        try:
            self.rpc.call("bdev_thin_delete", {"name": self.name(i)})
        except RpcError:
            return True
        return False

    def grow(self, data_bytes):
        os.truncate(self.data, data_bytes)
        self.rpc.call("bdev_uring_rescan", {"name": self.pool + "D"})
        self.rpc.call("bdev_thin_pool_resize", {"name": self.pool})

    def set_tid(self, cur, new):
        self.rpc.call("bdev_thin_pool_set_transaction_id", {"name": self.pool, "current": cur, "new": new})

    def reserve(self):
        self.rpc.call("bdev_thin_pool_reserve_metadata_snap", {"name": self.pool})

    def release(self):
        self.rpc.call("bdev_thin_pool_release_metadata_snap", {"name": self.pool})

    def used(self):
        return self.rpc.call("bdev_thin_pool_get_pools", {"name": self.pool})[0]["used_data_blocks"]

    def mode(self):
        return self.rpc.call("bdev_thin_pool_get_pools", {"name": self.pool})[0]["mode"]

    def error_if_no_space(self):
        return self.rpc.call("bdev_thin_pool_get_pools", {"name": self.pool})[0]["error_if_no_space"]

    def close(self):
        """Detaches and closes the pool (it commits); the files stay."""
        if self.closed:
            return
        self.closed = True
        for i in list(self.nbd):
            try:
                self.detach(i)
            except Exception:
                pass
        for call, params in (("bdev_thin_pool_delete", {"name": self.pool}),
                             ("bdev_uring_delete", {"name": self.pool + "M"}),
                             ("bdev_uring_delete", {"name": self.pool + "D"})):
            try:
                self.rpc.call(call, params)
            except RpcError:
                pass


PROFILE = collections.Counter()


def timed(what, f, *args):
    t0 = time.monotonic()
    try:
        return f(*args)
    finally:
        PROFILE[what] += time.monotonic() - t0


def run_ops(side, ops):
    for op in ops:
        t0 = time.monotonic()
        run_op(side, op)
        PROFILE["%s %s" % (type(side).__name__, op[0])] += time.monotonic() - t0


def run_op(side, op):
    if True:
        kind = op[0]
        if kind == "create":
            side.create(op[1])
        elif kind == "snap":
            side.snap(op[1], op[2])
        elif kind == "write":
            _, i, off, size, tag, flush = op
            dev_write(side.path(i), off, data_for(tag, size), flush)
        elif kind == "discard":
            _, i, off, size = op
            dev_discard(side.path(i), off, size)
        elif kind == "delete":
            side.delete(op[1])
        elif kind == "delete_missing":
            if not side.delete_missing(op[1]):
                raise Mismatch("%s: deleting device %d, which does not exist, succeeded"
                               % (type(side).__name__, op[1]))
        elif kind == "set_tid":
            side.set_tid(op[1], op[2])
        elif kind == "reserve":
            side.reserve()
        elif kind == "release":
            side.release()


# --- comparing metadata -------------------------------------------------------


TOOLS = {}
TOOLS_DIR = "/run/lab/oracle-tools"


def tool(prog):
    """argv for running PROG from copies on the guest's tmpfs (the program,
    its libraries and the dynamic loader): a program loaded over 9p costs
    most of a second per run here, one in tmpfs a tenth of that."""
    if prog in TOOLS:
        return TOOLS[prog]
    argv = [prog]
    try:
        real = os.path.realpath(shutil.which(prog))
        os.makedirs(TOOLS_DIR, exist_ok=True)
        libs = []
        for line in sh("ldd", real).stdout.splitlines():
            f = line.split()
            if "=>" in f and len(f) > 2 and f[2].startswith("/"):
                libs.append(f[2])
            elif f and f[0].startswith("/"):
                loader = f[0]
        for lib in libs + [loader, real]:
            dst = os.path.join(TOOLS_DIR, os.path.basename(lib))
            if not os.path.exists(dst):
                shutil.copy(lib, dst)
        # --argv0: a multi-call binary (pdata_tools) picks the tool by it.
        argv = [os.path.join(TOOLS_DIR, os.path.basename(loader)), "--library-path", TOOLS_DIR,
                "--argv0", prog, os.path.join(TOOLS_DIR, os.path.basename(real))]
        sh(*argv, "-V")
    except Exception as e:
        print("oracle: running %s from the host share (%r)" % (prog, e))
        argv = [prog]
    TOOLS[prog] = argv
    return argv


def thin_ls(meta):
    out = sh(*tool("thin_ls"), "--no-headers", "-o", "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS", meta).stdout
    rows = {}
    for line in out.splitlines():
        f = line.split()
        if f:
            rows[int(f[0])] = tuple(int(x) for x in f[1:])
    return rows


def canonical_dump(meta, snap=False):
    args = tool("thin_dump") + (["-m"] if snap else []) + [meta]
    root = ET.fromstring(sh(*args).stdout)
    sb = {k: root.get(k) for k in ("time", "transaction", "data_block_size", "nr_data_blocks")}
    devices = {}
    owners = collections.defaultdict(list)
    for dev in root.iter("device"):
        i = int(dev.get("dev_id"))
        attrs = {k: dev.get(k) for k in ("mapped_blocks", "creation_time", "snap_time")}
        mapped = []
        for m in dev:
            t = m.get("time")
            if m.tag == "range_mapping":
                ob, db, n = int(m.get("origin_begin")), int(m.get("data_begin")), int(m.get("length"))
                for k in range(n):
                    mapped.append((ob + k, t))
                    owners[db + k].append((i, ob + k))
            elif m.tag == "single_mapping":
                ob, db = int(m.get("origin_block")), int(m.get("data_block"))
                mapped.append((ob, t))
                owners[db].append((i, ob))
        devices[i] = (attrs, sorted(mapped))
    sharing = sorted(sorted(v) for v in owners.values() if len(v) > 1)
    return {"superblock": sb, "devices": devices, "sharing": sharing}


def diff_dumps(what, a, b):
    """Lines saying where two canonical dumps differ."""
    out = []
    if a["superblock"] != b["superblock"]:
        out.append("%s superblock: dm-thin %s, ferrothin %s" % (what, a["superblock"], b["superblock"]))
    for i in sorted(set(a["devices"]) | set(b["devices"])):
        da, db = a["devices"].get(i), b["devices"].get(i)
        if da is None or db is None:
            out.append("%s device %d: only in %s" % (what, i, "ferrothin" if da is None else "dm-thin"))
        elif da != db:
            if da[0] != db[0]:
                out.append("%s device %d: dm-thin %s, ferrothin %s" % (what, i, da[0], db[0]))
            ma, mb = set(da[1]), set(db[1])
            if ma != mb:
                out.append("%s device %d mappings (block, time): only dm-thin %s; only ferrothin %s"
                           % (what, i, sorted(ma - mb)[:12], sorted(mb - ma)[:12]))
    if a["sharing"] != b["sharing"]:
        sa = set(map(tuple, a["sharing"]))
        sb = set(map(tuple, b["sharing"]))
        out.append("%s sharing ((dev, block) sets on one data block): only dm-thin %s; only ferrothin %s"
                   % (what, sorted(sa - sb)[:8], sorted(sb - sa)[:8]))
    return out


# --- out of data space ----------------------------------------------------------

NO_SPACE_DATA = 16 * BLOCK  # a data device of 16 blocks


def _try_write(path, off, size, tag):
    try:
        dev_write(path, off, data_for(tag, size), False)
        return True
    except OSError:
        return False


def no_space(d, rpc, addr):
    """Both pools with error_if_no_space and 16 data blocks; one device
    written block by block past that (whole and partial blocks); then
    4 blocks discarded and more written. Compared: which writes succeed,
    the pools' modes and used blocks, device contents and canonical dumps."""
    global DATA_BYTES
    saved, DATA_BYTES = DATA_BYTES, NO_SPACE_DATA
    k = f = None
    seen = {}
    try:
        for side in ("dm-thin", "ferrothin"):
            if side == "dm-thin":
                k = Kernel(d, 0, features="1 error_if_no_space")
                s = k
            else:
                f = Ferro(rpc, addr, d, 0, {"error_if_no_space": True})
                s = f
            s.create(0)
            path = s.path(0)
            ok = []
            for b in range(20):  # whole blocks, then a partial one into a new block
                ok.append(_try_write(path, b * BLOCK, BLOCK, "ns:%d" % b))
            ok.append(_try_write(path, 30 * BLOCK + PAGE, PAGE, "ns:p"))
            mode1 = s.mode()
            used1 = s.used()
            dev_discard(path, 4 * BLOCK, 4 * BLOCK)
            time.sleep(2)  # a commit period on both
            for b in range(32, 38):
                ok.append(_try_write(path, b * BLOCK, BLOCK, "ns:%d" % b))
            seen[side] = {"writes": ok, "mode when full": mode1, "used when full": used1,
                          "mode after discard": s.mode(), "used after": s.used(), "md5": dev_md5(path)}
            s.close()
        problems = ["out of data space: %s: dm-thin %s, ferrothin %s" % (key, seen["dm-thin"][key], seen["ferrothin"][key])
                    for key in seen["dm-thin"] if seen["dm-thin"][key] != seen["ferrothin"][key]]
        problems += diff_dumps("out of data space: thin_dump", canonical_dump(k.meta), canonical_dump(f.meta))
        return seen["dm-thin"], problems
    finally:
        DATA_BYTES = saved
        for s in (k, f):
            if s:
                s.close()
        for p in ("k0.meta", "k0.data", "f0.meta", "f0.data"):
            try:
                os.unlink(os.path.join(d, p))
            except OSError:
                pass


NO_SPACE_TIMEOUT = 3  # seconds, on both sides
DM_NO_SPACE_TIMEOUT = "/sys/module/dm_thin_pool/parameters/no_space_timeout"


class Pending:
    """A write that may be held: its outcome and how long it took."""

    def __init__(self, path, off, size, tag):
        self.result = None
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, args=(path, off, size, tag), daemon=True)
        self.thread.start()

    def _run(self, path, off, size, tag):
        ok = _try_write(path, off, size, tag)
        self.result = (ok, time.monotonic() - self.t0)

    def wait(self, secs):
        self.thread.join(secs)
        if self.result is None:
            raise RuntimeError("a held write did not end in %d s" % secs)
        return self.result


def _held(secs):
    """Coarse, so that emulation's jitter cannot tell the sides apart."""
    return "held" if secs >= NO_SPACE_TIMEOUT - 1 else "at once"


def no_space_queue(d, rpc, addr):
    """Both pools in queue mode (no error_if_no_space), 16 data blocks and a
    no_space_timeout of 3 s (dm-thin's is a module parameter; the guest is
    ours). A write that needs a block when none is left is held, not
    failed; growing the data device lets it finish. Filled again, the next
    such write is held until the timeout and then fails, as do the writes
    after it at once, while overwrites of mapped blocks still work; a
    discard and a commit bring the pool back to write mode and queueing.
    Compared: each write's outcome and whether it was held, the modes,
    whether the pool errors on no space, used blocks, contents, dumps."""
    global DATA_BYTES
    saved, DATA_BYTES = DATA_BYTES, NO_SPACE_DATA
    k = f = None
    seen = {}
    with open(DM_NO_SPACE_TIMEOUT) as t:
        saved_timeout = t.read().strip()
    try:
        with open(DM_NO_SPACE_TIMEOUT, "w") as t:
            t.write(str(NO_SPACE_TIMEOUT))
        for side in ("dm-thin", "ferrothin"):
            if side == "dm-thin":
                k = Kernel(d, 1)
                s = k
            else:
                f = Ferro(rpc, addr, d, 1, {"error_if_no_space": False, "no_space_timeout_s": NO_SPACE_TIMEOUT})
                s = f
            s.create(0)
            path = s.path(0)
            r = {"fill": [_try_write(path, b * BLOCK, BLOCK, "q:%d" % b) for b in range(16)]}
            # The 17th block: held until the data device grows.
            w = Pending(path, 16 * BLOCK + PAGE, PAGE, "q:16")
            time.sleep(1.5)
            r["held while full"] = w.result is None
            r["mode while held"] = s.mode()
            s.grow(2 * NO_SPACE_DATA)
            ok, _ = w.wait(30)
            r["held write after growing"] = ok
            r["mode after growing"] = s.mode()
            r["refill"] = [_try_write(path, b * BLOCK, BLOCK, "q:%d" % b) for b in range(17, 32)]
            # Full again: held until the timeout, then failed.
            ok, secs = Pending(path, 32 * BLOCK, BLOCK, "q:32").wait(30)
            r["write when full again"] = (ok, _held(secs))
            r["mode after the timeout"] = s.mode()
            r["errors on no space after the timeout"] = s.error_if_no_space()
            ok, secs = Pending(path, 33 * BLOCK, PAGE, "q:33").wait(30)
            r["next write to a new block"] = (ok, _held(secs))
            r["overwrite of a mapped block"] = _try_write(path, 3 * BLOCK, BLOCK, "q:3b")
            r["used when full"] = s.used()
            dev_discard(path, 8 * BLOCK, 2 * BLOCK)
            time.sleep(2)  # a commit period on both
            r["mode after discard"] = s.mode()
            r["errors on no space after discard"] = s.error_if_no_space()
            r["write after discard"] = _try_write(path, 40 * BLOCK, BLOCK, "q:40")
            r["used after"] = s.used()
            r["md5"] = dev_md5(path)
            seen[side] = r
            s.close()
        problems = ["queue when out of data space: %s: dm-thin %s, ferrothin %s"
                    % (key, seen["dm-thin"][key], seen["ferrothin"][key])
                    for key in seen["dm-thin"] if seen["dm-thin"][key] != seen["ferrothin"][key]]
        problems += diff_dumps("queue when out of data space: thin_dump", canonical_dump(k.meta), canonical_dump(f.meta))
        return seen["dm-thin"], problems
    finally:
        DATA_BYTES = saved
        with open(DM_NO_SPACE_TIMEOUT, "w") as t:
            t.write(saved_timeout)
        for s in (k, f):
            if s:
                s.close()
        for p in ("k1.meta", "k1.data", "f1.meta", "f1.data"):
            try:
                os.unlink(os.path.join(d, p))
            except OSError:
                pass


def past_the_end(d, rpc, addr):
    """Reads and writes that reach past a device's end. The kernel's block
    layer clips or refuses them before a target sees them, so this checks
    that both sides present the same size to it: a write straddling the
    end is shortened, one at the end fails with ENOSPC, a read there
    returns nothing."""
    seen = {}
    for side in ("dm-thin", "ferrothin"):
        s = Kernel(d, 2) if side == "dm-thin" else Ferro(rpc, addr, d, 2)
        try:
            s.create(0)
            fd = os.open(s.path(0), os.O_RDWR | os.O_DIRECT)
            try:
                _buf[:2 * PAGE] = data_for("end", 2 * PAGE)
                r = {"straddling write": os.pwritev(fd, [memoryview(_buf)[:2 * PAGE]], DEV_BYTES - PAGE)}
                try:
                    os.pwritev(fd, [memoryview(_buf)[:PAGE]], DEV_BYTES)
                    r["write at the end"] = "ok"
                except OSError as e:
                    r["write at the end"] = errno.errorcode.get(e.errno, e.errno)
                r["read at the end"] = os.preadv(fd, [memoryview(_buf)[:PAGE]], DEV_BYTES)
            finally:
                os.close(fd)
            r["md5"] = dev_md5(s.path(0))
            seen[side] = r
        finally:
            s.close()
            for p in (s.meta, s.data):
                os.unlink(p)
    problems = ["past the end: %s: dm-thin %s, ferrothin %s" % (key, seen["dm-thin"][key], seen["ferrothin"][key])
                for key in seen["dm-thin"] if seen["dm-thin"][key] != seen["ferrothin"][key]]
    return seen["dm-thin"], problems


# --- one seed -------------------------------------------------------------------


def run_seed(seed, nops, d, rpc, addr):
    ops = generate(seed, nops)
    want = model(ops)
    msnap = sum(1 if o[0] == "reserve" else -1 if o[0] == "release" else 0 for o in ops) > 0
    problems = []
    k = f = None
    try:
        k = timed("Kernel setup", Kernel, d, seed)
        run_ops(k, ops)
        k_sums = {i: dev_md5(k.path(i)) for i in sorted(want)}
        k_used = k.used()
        timed("Kernel close", k.close)
        f = timed("Ferro setup", Ferro, rpc, addr, d, seed)
        run_ops(f, ops)
        f_sums = {i: dev_md5(f.path(i)) for i in sorted(want)}
        f_used = f.used()
        timed("Ferro close", f.close)
    finally:
        if k:
            k.close()
        if f:
            f.close()
    for i in sorted(want):
        if k_sums[i] != want[i]:
            problems.append("device %d: dm-thin reads differ from the model" % i)
        if f_sums[i] != want[i]:
            problems.append("device %d: ferrothin reads differ from the model%s"
                            % (i, "" if f_sums[i] == k_sums[i] else " and from dm-thin"))
    if k_used != f_used:
        problems.append("used data blocks: dm-thin %d, ferrothin %d" % (k_used, f_used))
    t0 = time.monotonic()
    for who, meta in (("dm-thin", k.meta), ("ferrothin", f.meta)):
        c = sh(*tool("thin_check"), meta, ok=False)
        if c.returncode != 0:
            problems.append("thin_check refuses %s's metadata: %s" % (who, (c.stdout + c.stderr).strip()))
    kl, fl = thin_ls(k.meta), thin_ls(f.meta)
    if kl != fl:
        for i in sorted(set(kl) | set(fl)):
            if kl.get(i) != fl.get(i):
                problems.append("thin_ls device %d (mapped, exclusive, shared): dm-thin %s, ferrothin %s"
                                % (i, kl.get(i), fl.get(i)))
    problems += diff_dumps("thin_dump", canonical_dump(k.meta), canonical_dump(f.meta))
    if msnap:
        problems += diff_dumps("thin_dump -m", canonical_dump(k.meta, True), canonical_dump(f.meta, True))
    PROFILE["compare"] += time.monotonic() - t0
    for p in (k.meta, k.data, f.meta, f.data):
        os.unlink(p)
    return ops, problems, len(want), k_used


def daemon_rss_kib():
    """The guest's ferrothin daemon's resident memory (KiB), or None: a
    run of hundreds of pools, exports and connections must hold it flat."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/comm" % pid) as f:
                if f.read().strip() != "ferrothin":
                    continue
            with open("/proc/%s/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            continue
    return None


def parse_seeds(text):
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += range(int(a), int(b or a) + 1)
    return out


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sock", required=True, help="ferrothin's RPC socket")
    ap.add_argument("--dir", required=True, help="where the pools' files go")
    ap.add_argument("--seeds", default="1-20", help="e.g. 1-20 or 3,7,9-12")
    ap.add_argument("--ops", type=int, default=24, help="operations per seed")
    ap.add_argument("--no-space", action="store_true",
                    help="also compare the error paths: out of data space (error and queue), past the end")
    ap.add_argument("--profile", action="store_true", help="print where the time went")
    ap.add_argument("--show-ops", action="store_true", help="print each seed's operations")
    args = ap.parse_args(argv)
    rpc = Rpc(args.sock)
    # One listen address for every export; port 0 picks a free one.
    # (a small RAM bdev holds it open).
    rpc.call("bdev_malloc_create", {"name": "Probe", "num_blocks": 16, "block_size": 4096})
    addr = rpc.call("nbd_start_disk", {"bdev_name": "Probe", "nbd_device": "127.0.0.1:0"})
    failed = 0
    if args.no_space:
        for what, case in (("out of data space", no_space), ("queue when out of data space", no_space_queue),
                           ("past the end", past_the_end)):
            try:
                got, problems = case(args.dir, rpc, addr)
            except Exception as e:
                got, problems = None, ["%s: error: %r" % (what, e)]
            if problems:
                failed += 1
                print("%s: DIFFERS" % what)
                for p in problems:
                    print("  " + p)
            else:
                print("%s: same (%s)" % (what, json.dumps({k: v for k, v in got.items() if k != "md5"})))
    print("at start: ferrothin RSS %s KiB" % daemon_rss_kib())
    done = 0
    for seed in parse_seeds(args.seeds):
        t0 = time.monotonic()
        try:
            ops, problems, ndev, used = run_seed(seed, args.ops, args.dir, rpc, addr)
        except Mismatch as e:
            ops, problems, ndev, used = generate(seed, args.ops), [str(e)], 0, 0
        except Exception as e:
            ops, problems, ndev, used = generate(seed, args.ops), ["error: %r" % e], 0, 0
        secs = time.monotonic() - t0
        if args.show_ops or problems:
            for n, op in enumerate(ops):
                print("  seed %d op %d: %s" % (seed, n, json.dumps(op)))
        if problems:
            failed += 1
            print("seed %d: DIFFERS (%.0f s)" % (seed, secs))
            for p in problems:
                print("  " + p)
        else:
            print("seed %d: same (%d ops, %d devices, %d data blocks used; %.0f s)"
                  % (seed, len(ops), ndev, used, secs))
        done += 1
        if done % 50 == 0:
            print("after %d seeds: ferrothin RSS %s KiB" % (done, daemon_rss_kib()))
        sys.stdout.flush()
    if args.profile:
        for what, secs in PROFILE.most_common():
            print("  profile: %-22s %6.1f s" % (what, secs))
    print("oracle: %d seeds%s, %d differ" % (len(parse_seeds(args.seeds)),
                                             " and the error paths" if args.no_space else "", failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
