"""The few system calls the data plane makes, callable from numba code.

A poll-mode driver's loop is compiled; it has to kick the kernel (``send`` on
a TX ring), wait for it (``poll``), or, in the classic socket path the
chapter contrasts with zero-copy, move each frame with ``recv``/``send`` (or
``read``/``write`` on a TAP device). A stage on an OS thread that has nothing
to do gives its CPU to another thread with ``sched_yield`` (the "threads"
model of ``labkit.run.workers``, and the switch-cost measurement of
``labkit.run.lthreads``). numba can call ctypes functions, but a
function that does cannot be cached on disk; so these are intrinsics that
declare libc's symbol and call it, as numba itself calls ``memcpy``. The
buffer is a numpy uint8 array plus a byte offset, never a raw address.

Every call returns what libc returns: a count, or -1 with ``errno()`` set.
Called from plain Python (the JIT-off twin), the same names go through ctypes.
"""
import ctypes
import errno as _errno
import os

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

EAGAIN, ENOBUFS, EINTR = _errno.EAGAIN, _errno.ENOBUFS, _errno.EINTR
MSG_DONTWAIT, MSG_TRUNC = 0x40, 0x20
POLLIN, POLLOUT = 0x1, 0x4

_I32, _I64 = ir.IntType(32), ir.IntType(64)
_I8P = ir.IntType(8).as_pointer()


def _buffer(context, builder, aty, arr, off):
    """i8* to arr's first byte + off (no bounds check: callers pass sizes that fit)."""
    ary = context.make_array(aty)(context, builder, arr)
    return builder.gep(builder.bitcast(ary.data, _I8P), [off])


def _call(builder, name, ret, argtys, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, argtys), name)
    return builder.call(fn, args)


def _io_intrinsic(name, with_flags):
    """ssize_t name(int fd, void *buf, size_t n[, int flags]) over (fd, arr, off, n[, flags])."""
    def typer(typingctx, fd, arr, off, n, *flags):
        if not isinstance(arr, types.Array):
            return None

        def codegen(context, builder, sig, args):
            fd_, ptr = builder.trunc(args[0], _I32), _buffer(context, builder, sig.args[1], args[1], args[2])
            argtys, argv = [_I32, _I8P, _I64], [fd_, ptr, args[3]]
            if with_flags:
                argtys.append(_I32)
                argv.append(builder.trunc(args[4], _I32))
            return _call(builder, name, _I64, argtys, argv)
        extra = (types.int64,) if with_flags else ()
        return types.int64(types.int64, arr, types.int64, types.int64, *extra), codegen
    if with_flags:
        return intrinsic(lambda typingctx, fd, arr, off, n, flags: typer(typingctx, fd, arr, off, n, flags))
    return intrinsic(lambda typingctx, fd, arr, off, n: typer(typingctx, fd, arr, off, n))


_c_recv = _io_intrinsic("recv", True)
_c_send = _io_intrinsic("send", True)
_c_read = _io_intrinsic("read", False)
_c_write = _io_intrinsic("write", False)


@intrinsic
def _c_poll(typingctx, pfd, nfds, timeout_ms):
    """int poll(struct pollfd *pfd, nfds_t nfds, int timeout) over an int32 array
    of [fd, events | revents << 16] pairs."""
    if not isinstance(pfd, types.Array):
        return None

    def codegen(context, builder, sig, args):
        ptr = _buffer(context, builder, sig.args[0], args[0], ir.Constant(_I64, 0))
        r = _call(builder, "poll", _I32, [_I8P, _I64, _I32], [ptr, args[1], builder.trunc(args[2], _I32)])
        return builder.sext(r, _I64)
    return types.int64(pfd, types.int64, types.int64), codegen


@intrinsic
def _c_sched_yield(typingctx):
    """int sched_yield(void): the kernel runs another thread of this CPU, if one is ready."""
    def codegen(context, builder, sig, args):
        return builder.sext(_call(builder, "sched_yield", _I32, [], []), _I64)
    return types.int64(), codegen


@intrinsic
def _c_errno(typingctx):
    def codegen(context, builder, sig, args):
        loc = _call(builder, "__errno_location", _I32.as_pointer(), [], [])
        return builder.sext(builder.load(loc), _I64)
    return types.int64(), codegen


# -- the names the data plane calls, and their plain-Python twins ----------------

_libc = ctypes.CDLL(None, use_errno=True)
_last_errno = [0]


def _py(fn, *args):
    r = fn(*args)
    _last_errno[0] = ctypes.get_errno() if r < 0 else 0
    return int(r)


def _ptr(arr, off):
    return ctypes.c_void_p(arr.ctypes.data + int(off))


def sys_recv(fd, arr, off, n, flags):
    return _py(_libc.recv, int(fd), _ptr(arr, off), ctypes.c_size_t(int(n)), int(flags))


def sys_send(fd, arr, off, n, flags):
    return _py(_libc.send, int(fd), _ptr(arr, off), ctypes.c_size_t(int(n)), int(flags))


def sys_read(fd, arr, off, n):
    return _py(_libc.read, int(fd), _ptr(arr, off), ctypes.c_size_t(int(n)))


def sys_write(fd, arr, off, n):
    return _py(_libc.write, int(fd), _ptr(arr, off), ctypes.c_size_t(int(n)))


def sys_poll(pfd, nfds, timeout_ms):
    return _py(_libc.poll, _ptr(pfd, 0), ctypes.c_ulong(int(nfds)), int(timeout_ms))


def sys_sched_yield():
    return _py(_libc.sched_yield)


def errno():
    """errno of the last failed call (in compiled code: libc's, thread-local)."""
    return _last_errno[0]


@overload(sys_recv, inline="always")
def _ov_recv(fd, arr, off, n, flags):
    return lambda fd, arr, off, n, flags: _c_recv(fd, arr, off, n, flags)


@overload(sys_send, inline="always")
def _ov_send(fd, arr, off, n, flags):
    return lambda fd, arr, off, n, flags: _c_send(fd, arr, off, n, flags)


@overload(sys_read, inline="always")
def _ov_read(fd, arr, off, n):
    return lambda fd, arr, off, n: _c_read(fd, arr, off, n)


@overload(sys_write, inline="always")
def _ov_write(fd, arr, off, n):
    return lambda fd, arr, off, n: _c_write(fd, arr, off, n)


@overload(sys_poll, inline="always")
def _ov_poll(pfd, nfds, timeout_ms):
    return lambda pfd, nfds, timeout_ms: _c_poll(pfd, nfds, timeout_ms)


@overload(sys_sched_yield, inline="always")
def _ov_sched_yield():
    return lambda: _c_sched_yield()


@overload(errno, inline="always")
def _ov_errno():
    return lambda: _c_errno()


def strerror(code):
    return f"{_errno.errorcode.get(code, code)}: {os.strerror(code)}"
