"""The judge: one graded notebook, run in a process of its own, each check decided
out of the student's reach.

``labkit grade`` (``grade.py``) starts ``python -m labkit.course.judge`` once per
submission and writes its job on stdin (JSON): a secret key, the solution's
cells that come before the student's cell (the *trusted prefix*), the graded
sequence (the submission's cells, the solution's checks in their places), the
names the student's cell must define, and the folders the submission may not
read. The judge answers on a pipe of its own, one JSON line per event, each
signed with the key (HMAC-SHA256 over a sequence number and the event):
``setup``, ``start`` before each cell, ``cell`` and ``check`` after it,
``flag`` for what a human should read, ``done`` at the end. The parent counts
a check as passed only when a correctly signed ``check`` event says so: a
judge that dies, hangs or goes quiet leaves the checks it did not decide
failed, and a line the judge did not sign is ignored (and flagged).

How a check stays the solution's, whatever the student's cells do:

1. **Trusted first.** Before any student code runs, the judge imports the
   checking machinery, compiles every check (code objects cannot be changed
   afterwards) and runs the trusted prefix (imports, constants, the starter)
   into a namespace of its own. Then it snapshots the machinery: the globals
   of every ``labkit`` and ``numpy`` module, of ``threading`` and
   ``builtins``, the attributes of labkit's classes, the contents of
   labkit's public module-level tables (arrays, lists, dicts, sets), the hooks
   of ``sys`` and its module table.
2. **A guard that cannot be removed.** An audit hook (PEP 578: once added, a
   hook stays) refuses what a submission would need to reach the judge's own
   state or the solutions: frames and the garbage collector
   (``sys._getframe``, ``tb_frame``, ``gi_frame``, ``gc.get_objects``...),
   tracing, new audit hooks, changing a function's code or defaults or an
   object's class, loading libraries through ctypes, signal handlers (a
   handler is handed the interrupted frame) and signals, a second copy of a
   built-in module, new processes, and opening the solutions, any notebook or
   the process's own memory (``/proc/self/mem``). A refusal raises
   ``PermissionError`` in the submission and becomes a flag.
3. **Each check in a clean room.** Before a check the machinery is put back
   as snapshotted; the check (the solution's code, compiled at the start) runs
   in a fresh namespace: the trusted prefix's names, plus the names the
   student's cell defines, taken from the submission. It passes when it
   raises nothing (``SystemExit`` and ``KeyboardInterrupt`` are failures);
   what it prints does not matter. After it the machinery is compared with
   the snapshot again: a check during which the machinery changed fails, and
   so does a check that starts while a thread the notebook started is alive
   (a thread could change the machinery between the two comparisons).

The judge's own code after the first student cell uses only what it bound
before: closures over local variables, C functions and the methods of
built-in types, never a module global that a submission could rebind.

What remains possible is said in ``grading/README.md``: code that writes to
memory by raw address (numba intrinsics, ctypes function pointers called from
compiled code) can still change anything in this process. ``grade.py`` flags
such code for a human.
"""
import builtins
import json
import os
import sys
import types

DENIED_EVENTS = {
    "gc.get_objects": "walking the garbage collector's objects",
    "gc.get_referrers": "walking the garbage collector's referrers",
    "gc.get_referents": "walking the garbage collector's referents",
    "sys._getframe": "reading the call stack (sys._getframe, inspect)",
    "sys._current_frames": "walking every thread's call stack (sys._current_frames)",
    "sys.settrace": "tracing (sys.settrace)",
    "sys.setprofile": "profiling hooks (sys.setprofile)",
    "sys.addaudithook": "adding an audit hook",
    "ctypes.dlopen": "loading a library with ctypes",
    "ctypes.dlsym/handle": "looking up a C function with ctypes",
    "subprocess.Popen": "starting a process",
    "os.system": "starting a process",
    "os.exec": "starting a process",
    "os.posix_spawn": "starting a process",
    "os.spawn": "starting a process",
    "os.fork": "forking",
    "os.forkpty": "forking",
    "pty.spawn": "starting a process",
    "os.kill": "sending a signal",
    "os.killpg": "sending a signal",
    "signal.pthread_kill": "sending a signal",
    "socket.connect": "opening a network connection",
    "socket.sendto": "sending on a socket",
    "socket.sendmsg": "sending on a socket",
}
FRAME_ATTRS = ("tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_code", "gi_code", "cr_code", "ag_code")
LOCKED_ATTRS = ("__code__", "__defaults__", "__kwdefaults__", "__class__", "__globals__", "__closure__")
NO_REIMPORT = ("_signal", "signal", "gc", "ctypes", "_ctypes", "faulthandler", "_testcapi", "_testinternalcapi",
               "_xxsubinterpreters", "_posixsubprocess", "pty", "labkit.course.judge")
MACHINERY = ("labkit", "numpy", "threading")   # module families whose globals are put back before each check
SYS_HOOKS = ("stdout", "stderr", "stdin", "displayhook", "excepthook", "unraisablehook", "breakpointhook")
MAX_ARRAY_BYTES = 64 << 20                     # labkit's module-level arrays watched (tables), each up to this
MAX_ITEMS = 100_000                            # and its lists, dicts and sets, each up to this many items
MAX_REFUSED = 200


# ---- the channel ---------------------------------------------------------------

def _encoder():
    """json.dumps(obj, sort_keys=True, separators=(",", ":")) from C parts only."""
    from json import encoder

    def unsupported(o):
        raise TypeError(f"{type(o).__name__} in an event")
    make = encoder.c_make_encoder or None
    if make is None:                              # no C accelerator: the pure-Python encoder
        return lambda obj: json.dumps(obj, sort_keys=True, separators=(",", ":"))
    enc = make(None, unsupported, encoder.c_encode_basestring_ascii, None, ":", ",", True, False, True)
    join = "".join
    return lambda obj: join(enc(obj, 0))


def _hmac_fn():
    try:
        from _hashlib import hmac_digest
        return lambda key, msg: hmac_digest(key, msg, "sha256")
    except ImportError:                           # Python without OpenSSL's HMAC
        import hashlib
        import hmac
        return lambda key, msg: hmac.new(key, msg, hashlib.sha256).digest()


def make_sender(fd, key):
    """send(event): one signed line on fd. A closure over C functions only."""
    dumps, mac_of, write = _encoder(), _hmac_fn(), os.write
    state = [0]

    def send(ev):
        n = state[0]
        body = dumps(ev)
        mac = mac_of(key, ("%d:%s" % (n, body)).encode()).hex()
        data = dumps({"n": n, "ev": ev, "mac": mac}).encode() + b"\n"
        state[0] = n + 1
        while data:
            data = data[write(fd, data):]
    return send


def verify(line, key, expected_n):
    """The event of one line of the channel, or None when the judge did not
    sign it (bad JSON, wrong signature, out of sequence)."""
    import hmac
    try:
        msg = json.loads(line)
        ev, n, mac = msg["ev"], msg["n"], msg["mac"]
    except (ValueError, KeyError, TypeError):
        return None
    if n != expected_n or not isinstance(ev, dict) or not isinstance(mac, str):
        return None
    body = json.dumps(ev, sort_keys=True, separators=(",", ":"))
    want = _hmac_fn()(key, f"{n}:{body}".encode()).hex()
    return ev if hmac.compare_digest(want, mac) else None


# ---- cells -----------------------------------------------------------------------

def compile_cell(source, filename, magics=True):
    """(statements, last expression or None) as code objects; IPython's magics
    turned into calls first (``%timeit x``, as a student may leave it)."""
    import ast
    import linecache
    if magics:
        try:
            from IPython.core.inputtransformer2 import TransformerManager
            source = TransformerManager().transform_cell(source)
        except Exception:
            pass
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    tree = ast.parse(source, filename)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = compile(ast.Expression(tree.body.pop().value), filename, "eval")
    return compile(tree, filename, "exec"), last


def make_one_line():
    """one_line(exc): ``Type: message`` on one line, without touching its frames."""
    from traceback import format_exception_only
    join, type_, len_ = "".join, type, len

    def one_line(exc, limit=300):
        try:
            text = join(format_exception_only(type_(exc), exc)).strip()
        except BaseException:                          # a __str__ that raises
            text = type_(exc).__name__
        text = " ".join(text.split())
        return text if len_(text) <= limit else text[:limit - 3] + "..."
    return one_line


# ---- the machinery: snapshot, put back, compare ---------------------------------

def snapshot_machinery(extra=()):
    """The checking machinery as it is now: (watched modules, labkit's and
    threading's classes, labkit's public tables, sys's hooks, sys's lists,
    sys.modules' entries), each with a copy to compare with."""
    import numpy as np
    import threading  # noqa: F401  (its module is watched)
    ndarray = np.ndarray
    modules = {name: m for name, m in list(sys.modules.items())
               if isinstance(m, types.ModuleType) and name.split(".")[0] in MACHINERY}
    for m in extra:
        modules["(judge) " + m.__name__] = m
    modules["builtins"] = builtins
    watched = [(name, m, m.__dict__, dict(m.__dict__)) for name, m in modules.items()]
    classes, contents, seen = [], [], set()

    def contents_of(label, v, depth):
        """labkit's public tables, by content: arrays, lists, dicts, sets (and
        what they hold, three levels down); a student could empty one in place."""
        if id(v) in seen or depth > 3:
            return
        if isinstance(v, ndarray):
            if v.nbytes <= MAX_ARRAY_BYTES:
                seen.add(id(v))
                contents.append((label, v, v.copy()))
            return
        if isinstance(v, (list, dict, set, bytearray)):
            if len(v) > MAX_ITEMS:
                return
            seen.add(id(v))
            contents.append((label, v, v.copy()))
        if isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                contents_of(f"{label}[{i}]", x, depth + 1)
        elif isinstance(v, dict):
            for k, x in list(v.items()):
                contents_of(f"{label}[{k!r}]", x, depth + 1)

    for name, m in modules.items():
        if not name.startswith(("labkit", "threading")):
            continue
        for k, v in list(m.__dict__.items()):
            if isinstance(v, type) and getattr(v, "__module__", "").startswith(("labkit", "threading")) \
                    and id(v) not in seen:
                seen.add(id(v))
                classes.append((v, dict(v.__dict__)))
            elif name.startswith("labkit") and not k.startswith("_"):      # _private: caches and state
                contents_of(f"{name}.{k}", v, 0)
    hooks = [(k, getattr(sys, k, None)) for k in SYS_HOOKS]
    lists = [(k, getattr(sys, k), list(getattr(sys, k))) for k in ("meta_path", "path_hooks")]
    entries = [(name, m) for name, m in modules.items() if name != "builtins" and not name.startswith("(")]
    return watched, classes, contents, hooks, lists, entries


def make_same():
    """same(v, copy): v holds what copy holds, by identity (an object's own
    __eq__ is not asked), or by value for arrays and bytes."""
    import numpy as np
    ndarray, array_equal = np.ndarray, np.array_equal
    isinstance_, len_, all_, zip_, id_ = isinstance, len, all, zip, id

    def same(v, copy):
        if isinstance_(v, ndarray):
            return v.shape == copy.shape and v.dtype == copy.dtype and array_equal(v, copy, equal_nan=True)
        if isinstance_(v, bytearray):
            return v == copy
        if len_(v) != len_(copy):
            return False
        if isinstance_(v, dict):
            return all_(k in v and v[k] is x for k, x in copy.items())
        if isinstance_(v, set):
            ids = {id_(x) for x in v}
            return all_(id_(x) in ids for x in copy)
        return all_(a is b for a, b in zip_(v, copy))
    return same


LOOSE = ("_", "__warningregistry__")      # what Python itself sets in a module as it runs


def make_changes(snap, same):
    """changes(): what differs from the snapshot, as "module.name" strings."""
    watched, classes, contents, hooks, lists, entries = snap
    missing, loose, sys_, table = object(), frozenset(LOOSE), sys, sys.modules
    ModuleType, isinstance_, getattr_, list_ = types.ModuleType, isinstance, getattr, list

    def changes():
        out = []
        for name, m, now, saved in watched:
            for k, v in saved.items():
                if v is not None and k not in loose and now.get(k, missing) is not v:
                    out.append(name + "." + k)
            for k, v in now.items():
                if k not in saved and k not in loose and not isinstance_(v, ModuleType):
                    out.append(name + "." + k)
        for cls, saved in classes:
            now = cls.__dict__
            for k in list_(saved) + [k for k in now if k not in saved]:
                if now.get(k, missing) is not saved.get(k, missing):
                    out.append(cls.__module__ + "." + cls.__qualname__ + "." + k)
        for name, v, copy in contents:
            if not same(v, copy):
                out.append(name + " (its contents)")
        for k, v in hooks:
            if getattr_(sys_, k, None) is not v:
                out.append("sys." + k)
        for k, lst, saved in lists:
            if getattr_(sys_, k) is not lst or not same(lst, saved):
                out.append("sys." + k)
        for name, m in entries:
            if table.get(name) is not m:
                out.append("sys.modules[" + name + "]")
        return out
    return changes


def make_restore(snap, same):
    """restore(): put everything back as snapshotted."""
    import numpy as np
    watched, classes, contents, hooks, lists, entries = snap
    missing, loose, sys_, table = object(), frozenset(LOOSE), sys, sys.modules
    ModuleType, ndarray, copyto = types.ModuleType, np.ndarray, np.copyto
    isinstance_, setattr_, delattr_ = isinstance, setattr, delattr

    def restore():
        for name, m, now, saved in watched:
            for k, v in saved.items():
                if k not in loose and now.get(k, missing) is not v:
                    now[k] = v
            for k in [k for k, v in now.items() if k not in saved and k not in loose
                      and not isinstance_(v, ModuleType)]:
                del now[k]
        for cls, saved in classes:
            for k in [k for k in cls.__dict__ if k not in saved]:
                delattr_(cls, k)
            for k, v in saved.items():
                if cls.__dict__.get(k, missing) is not v and k not in ("__dict__", "__weakref__"):
                    setattr_(cls, k, v)
        for name, v, copy in contents:
            if same(v, copy):
                continue
            if isinstance_(v, ndarray):
                if v.shape == copy.shape and v.dtype == copy.dtype:
                    v.flags.writeable = True
                    copyto(v, copy)
            elif isinstance_(v, (list, bytearray)):
                v[:] = copy
            else:
                v.clear()
                v.update(copy)
        for k, v in hooks:
            setattr_(sys_, k, v)
        for k, lst, saved in lists:
            setattr_(sys_, k, lst)
            lst[:] = saved
        for name, m in entries:
            table[name] = m
    return restore


def make_machinery(extra=()):
    """(changes, restore) closures over a snapshot of the checking machinery,
    taken now. changes() lists what differs ("module.name"); restore() puts
    it back. Both use bound built-ins only: they work whatever was rebound."""
    snap, same = snapshot_machinery(extra), make_same()
    return make_changes(snap, same), make_restore(snap, same)


def make_threads():
    """(alive, hidden): alive() is {id: name} of the Python threads alive now
    (threading's own records); hidden() says why those records cannot be
    trusted (a thread alive now was taken out of them), or None."""
    import threading
    enumerate_, records, module = threading.enumerate, threading._active, threading.__dict__
    me = threading.get_ident()                     # the judge's thread, in the records from the start
    mine, count = records.get(me), len(records)
    len_, id_ = len, id

    def hidden():
        if module.get("_active") is not records:
            return "threading's record of threads was replaced"
        if records.get(me) is not mine:
            return "threading's record of threads was changed"
        if len_(records) < count:
            return "threads were taken out of threading's record"
        return None
    return (lambda: {id_(t): t.name for t in enumerate_() if t.is_alive()}), hidden


# ---- the guard -----------------------------------------------------------------

class Refused(PermissionError, ValueError, RuntimeError):
    """What the guard raises. A ValueError and a RuntimeError too: the
    standard library's own uses of frames expect those and carry on
    (namedtuple and typing call sys._getframe for a module name,
    traceback.clear_frames reads tb_frame, and numba calls it on every
    failed lookup of a global)."""


def denied_inodes(denied_dirs):
    """(device, inode) of everything under the denied folders, and of this
    process's memory as a file (/proc/self/mem and its threads')."""
    inodes = set()
    for d in denied_dirs:
        for root, dirs, files in os.walk(d):
            for name in [root] + [os.path.join(root, f) for f in files + dirs]:
                try:
                    st = os.stat(name)
                    inodes.add((st.st_dev, st.st_ino))
                except OSError:
                    pass
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:                                     # no /proc (macOS)
        tasks = []
    for mem in ["/proc/self/mem"] + [f"/proc/self/task/{t}/mem" for t in tasks]:
        try:
            st = os.stat(mem)
            inodes.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    return frozenset(inodes)


def make_guard(denied_dirs, refused):
    """The audit hook: a closure over locals only. Refuses the events of
    DENIED_EVENTS, reading frames, changing code, defaults and classes,
    importing NO_REIMPORT again, opening or listing what is in the denied
    folders (by inode: symbolic and hard links too) and opening any notebook;
    appends each reason to ``refused``."""
    stat, fsdecode_ok = os.stat, (str, bytes)
    denied_events = dict(DENIED_EVENTS)
    frame_attrs, locked, no_reimport = frozenset(FRAME_ATTRS), frozenset(LOCKED_ATTRS), frozenset(NO_REIMPORT)
    inodes = denied_inodes(denied_dirs)
    isinstance_, len_, str_, append = isinstance, len, str, refused.append
    busy = [False]
    quiet_prefix = "reading "           # frames: refused, but libraries try it too (see Refused); not flagged
    debug = os.environ.get("LABKIT_JUDGE_DEBUG") == "1"      # where each refusal came from, in the log
    if debug:
        from traceback import print_stack

    def denied_path(path):
        if not isinstance_(path, fsdecode_ok):
            return False
        if isinstance_(path, str_):
            if path.endswith(".ipynb") or (path.startswith("/proc/") and path.endswith("/mem")):
                return True
        elif path.endswith(b".ipynb") or (path.startswith(b"/proc/") and path.endswith(b"/mem")):
            return True
        try:
            st = stat(path)
        except (OSError, ValueError):
            return False
        return (st.st_dev, st.st_ino) in inodes

    def why(event, args):
        if event in denied_events:
            return denied_events[event]
        if event == "object.__getattr__":
            return "reading a frame's " + args[1] if len_(args) > 1 and args[1] in frame_attrs else None
        if event == "object.__setattr__":
            return "changing an object's " + args[1] if len_(args) > 1 and args[1] in locked else None
        if event == "ctypes.dlsym":
            lib = args[0] if args else None
            return None if "llvmlite" in str_(getattr(lib, "_name", lib)) else "looking up a C function with ctypes"
        if event == "import":
            return "importing " + str_(args[0]) + " again" if args and str_(args[0]) in no_reimport else None
        if event == "open":
            return "opening " + str_(args[0]) if args and denied_path(args[0]) else None
        if event == "os.listdir" or event == "os.scandir":
            return "listing " + str_(args[0]) if args and args[0] is not None and denied_path(args[0]) else None
        return None

    def hook(event, args):
        if busy[0]:
            return
        busy[0] = True
        try:
            reason = why(event, args)
        finally:
            busy[0] = False
        if reason is not None:
            quiet = reason.startswith(quiet_prefix)
            if debug:
                busy[0] = True
                print_stack(limit=8)
                busy[0] = False
            if not quiet and len_(refused) < MAX_REFUSED:
                append(reason)
            raise Refused("labkit grade does not allow " + reason + " in a graded notebook")
    return hook


def deny_signal_handlers():
    """A signal handler is called with the interrupted frame: no new handlers.
    The functions are replaced in both modules and the originals dropped. A
    fresh copy of a built-in module would bring them back: every built-in
    module is imported now, and making another copy (``_imp.create_builtin``)
    is refused from here on (the guard refuses importing the modules again)."""
    import _imp
    import _signal
    import importlib
    import signal
    for name in sys.builtin_module_names:
        try:
            importlib.import_module(name)
        except ImportError:
            pass

    def signal_refused(*args, **kwargs):
        raise PermissionError("labkit grade does not allow installing a signal handler in a graded notebook")

    def create_builtin_refused(spec):
        raise PermissionError("labkit grade does not allow a second copy of a built-in module in a graded notebook")
    for m in (_signal, signal):
        m.signal = signal_refused
    _imp.create_builtin = create_builtin_refused


# ---- the run -------------------------------------------------------------------

def make_shell():
    """IPython's shell, for a cell's magics and display: no history database,
    no frames for a magic's namespace, and no %timeit (IPython's reads a
    frame; timings are not graded)."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config
    config = Config()
    config.HistoryManager.enabled = False              # nothing kept between runs
    shell = InteractiveShell.instance(config=config)
    shell.get_local_scope = lambda stack_depth: {}    # a cell's magics (%time) see the user namespace

    def timeit_not_run(line="", cell=None):
        print("%timeit: not run while grading (measurements are not graded)")
    shell.register_magic_function(timeit_not_run, "line_cell", "timeit")
    return shell


def prepare(job):
    """Before any student code: the checks compiled ({index: code}) and the
    trusted prefix run in a namespace of its own. Returns (checks, trusted)."""
    checks = {i: compile(item["source"], f"<check-{item['id']}>", "exec")
              for i, item in enumerate(job["sequence"]) if item["kind"] == "check"}
    trusted = {"__name__": "__main__", "__builtins__": builtins}
    for k, src in enumerate(job["trusted"]):
        code, last = compile_cell(src, f"<solution-cell-{k}>")
        exec(code, trusted)
        if last is not None:
            eval(last, trusted)
    return checks, trusted


def make_cell_runner(user, one_line):
    """run_cell(i, item): a cell of the notebook in its namespace, IPython's
    way (the last expression shown); returns its error or None."""
    compile_, exec_, eval_, print_, repr_, BaseException_ = compile_cell, exec, eval, print, repr, BaseException

    def run_cell(i, item):
        try:
            code, last = compile_(item["source"], "<ipython-input-%d-%s>" % (i, item["id"]))
            exec_(code, user)
            if last is not None:
                value = eval_(last, user)
                if value is not None:
                    print_(repr_(value))
        except BaseException_ as e:
            return one_line(e)
        return None
    return run_cell


def make_check_runner(user, trusted, deliverables, checks, machinery, foreign_threads, one_line, send):
    """run_check(i, item) -> (passed, message): the machinery put back, the
    check run in a namespace of its own, the machinery compared after it."""
    changes, restore = machinery
    dict_, len_, exec_, BaseException_ = dict, len, exec, BaseException
    deliverables = tuple(deliverables)

    def run_check(i, item):
        changed = changes()
        restore()
        if changed:
            more = len_(changed) - 8
            send({"ev": "flag", "text": "the notebook changed the checking machinery (put back before check "
                  + item["id"] + "): " + ", ".join(changed[:8]) + (" and %d more" % more if more > 0 else "")})
        foreign = foreign_threads()
        if foreign:
            return False, ("a thread the notebook started is still running (" + ", ".join(foreign[:3])
                           + "): checks run only when the notebook's own threads are done")
        ns = dict_(user)
        ns.update(trusted)
        for name in deliverables:
            if name in user:
                ns[name] = user[name]
            else:
                ns.pop(name, None)
        passed, message = False, None
        try:
            exec_(checks[i], ns)
            passed = True
        except BaseException_ as e:
            message = one_line(e)
        after = changes()
        if after:
            restore()
            if passed:
                passed, message = False, "the checking machinery changed while the check ran: " + ", ".join(after[:5])
            send({"ev": "flag", "text": "the notebook changed the checking machinery during check " + item["id"]
                  + ": " + ", ".join(after[:8])})
        foreign = foreign_threads()
        if foreign and passed:
            passed, message = False, "a thread the check did not start was running (" + ", ".join(foreign[:3]) + ")"
        return passed, message
    return run_check


def run(job, send):
    """Run one job; every outcome goes out through send()."""
    from labkit.course import exercise  # noqa: F401  (the checking helpers, loaded before anything else)
    me = sys.modules[__name__]          # before IPython makes its own __main__
    one_line = make_one_line()
    try:
        shell = make_shell()
        checks, trusted = prepare(job)
    except BaseException as e:
        send({"ev": "setup", "ok": False, "error": one_line(e)})
        return
    refused, len_, dict_ = [], len, dict
    deny_signal_handlers()
    machinery = make_machinery(extra=[me])
    alive, hidden = make_threads()
    baseline = alive()
    user = shell.user_ns
    user["__builtins__"] = builtins
    user["__name__"] = "__main__"

    def foreign_threads():
        why = hidden()
        return [why] if why else [name for key, name in alive().items() if key not in baseline]
    run_cell = make_cell_runner(user, one_line)
    run_check = make_check_runner(user, trusted, job["deliverables"], checks, machinery, foreign_threads,
                                  one_line, send)
    sys.addaudithook(make_guard(job.get("denied_dirs", []), refused))
    send({"ev": "setup", "ok": True})
    reported = [0]

    def flags_since():
        new = refused[reported[0]:]
        reported[0] = len_(refused)
        for why in dict_.fromkeys(new):
            send({"ev": "flag", "text": "refused: " + why})

    for i, item in enumerate(job["sequence"]):
        send({"ev": "start", "i": i})
        if item["kind"] == "cell":
            error = run_cell(i, item)
            flags_since()
            send({"ev": "cell", "i": i, "id": item["id"], "ok": error is None, "error": error})
        else:
            passed, message = run_check(i, item)
            flags_since()
            send({"ev": "check", "i": i, "id": item["id"], "passed": passed, "message": message})
    send({"ev": "done"})


def main():
    job = json.loads(sys.stdin.buffer.read())
    sys.stdin.close()
    sys.stdin = open(os.devnull)
    send = make_sender(int(job.pop("fd")), bytes.fromhex(job.pop("key")))
    try:
        run(job, send)
    except BaseException as e:                     # the judge's own failure: say it, if it can
        try:
            send({"ev": "crash", "error": f"{type(e).__name__}: {e}"[:300]})
        except BaseException:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(0)             # no interpreter shutdown: nothing of the notebook runs after the last event


if __name__ == "__main__":
    main()
