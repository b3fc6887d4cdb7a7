"""Small C kernels: compiled once with the system C compiler, cached per user, loaded with ctypes.

Shared by the SNN kernel (``snn/kernels.py``) and the flow table (``flows/table_kernel.py``).
Why not a compiled extension: the package stays pure Python (one wheel everywhere, editable
installs need nothing), and a host without a compiler still works through the numpy/torch
reference paths. A library is only loaded from a folder that this user owns and that no other
user can write (the cache folder and each folder above it), and from a file this user owns
and only this user can write; anything else is refused with a warning, never loaded.
Never imports torch or numpy (``packets/`` and ``flows/`` use it on sensor hosts).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import stat
import threading
import warnings
from pathlib import Path

# (subprocess, shutil and tempfile are imported only to build: loading a built kernel stays cheap)


class NativeUnavailable(RuntimeError):
    """A kernel cannot be built or loaded here (the message says why)."""


def cache_dir() -> Path:
    """Where compiled kernels live: ``$TRAFFICSNN_CACHE/kernels`` or ``~/.cache/trafficsnn/kernels``."""
    base = os.environ.get("TRAFFICSNN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "trafficsnn")
    return Path(base) / "kernels"


def cpu_tag() -> str:
    """A short digest of the CPU model and flags (``-march=native`` builds are per CPU)."""
    model = os.uname().machine
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags")):
                    model += line
                    if line.startswith("flags"):
                        break
    except OSError:
        pass
    return hashlib.sha256(model.encode()).hexdigest()[:12]


def _check_private_dir(d: Path) -> None:
    """``d`` (already resolved: no symlink left to re-point) and every folder above it: owned by us or
    root, not writable by others (sticky /tmp is fine above ``d`` itself, since there nobody else can
    rename our entries)."""
    uid = os.geteuid()
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o022:
        raise NativeUnavailable(f"kernel cache {d} is not a folder owned by this user and writable only by "
                                f"it (fix its owner/mode, or set TRAFFICSNN_CACHE to a private folder)")
    for p in d.parents:
        st = os.lstat(p)
        if st.st_uid not in (0, uid) or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
            raise NativeUnavailable(f"kernel cache {d} lies under {p}, which other users can write "
                                    f"(set TRAFFICSNN_CACHE to a private folder)")


def _check_private_file(f: Path) -> None:
    st = os.lstat(f)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise NativeUnavailable(f"kernel library {f} is not a regular file owned by this user and writable "
                                f"only by it; refusing to load it (delete it to rebuild)")


def _mkdirs_private(d: Path) -> None:
    """Create ``d`` and any missing folder above it, each 0700 (``mkdir(parents=True)`` would give the
    parents the umask's mode: 0775 under the common umask 002, which the check then refuses)."""
    missing = []
    p = d
    while not os.path.lexists(p):
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o700)
        except FileExistsError:
            pass


def _private_cache() -> Path:
    """The cache folder, created private (0700) and resolved once (every later use goes through the
    checked path). Where it cannot be made or is not private (read-only home, a folder from ``sudo -E``,
    a 0775 folder an older version left), a per-user folder in the temp dir is used instead, which
    must be a real folder (not a symlink) owned by this user."""
    d = cache_dir()
    try:
        _mkdirs_private(d)
        d = d.resolve(strict=True)
        _check_private_dir(d)
        return d
    except (OSError, NativeUnavailable) as exc:
        if os.environ.get("TRAFFICSNN_CACHE"):
            raise           # a folder the user chose: say what is wrong with it rather than go elsewhere
        first = exc
    import tempfile

    t = Path(tempfile.gettempdir()).resolve() / f"trafficsnn-kernels-{os.geteuid()}"
    try:
        os.mkdir(t, 0o700)
    except FileExistsError:
        pass
    except OSError:
        raise first from None
    try:
        _check_private_dir(t)           # lstat: a symlink planted under this name is refused
    except NativeUnavailable:
        raise first from None
    return t


def compiler() -> str | None:
    """The C compiler to use: ``$CC``, else cc, gcc or clang on the PATH."""
    import shutil

    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build(name: str, source: str, *, flags: tuple[str, ...] = ("-O3",), libs: tuple[str, ...] = (),
          _retry: bool = True) -> ctypes.CDLL:
    """Compile ``source`` (once per source, CPU and flags) and load it; raises ``NativeUnavailable``."""
    key = hashlib.sha256("\0".join((source, cpu_tag(), *flags, *libs)).encode()).hexdigest()[:16]
    d = _private_cache()
    target = d / f"{name}_{key}.so"
    if not target.exists():
        import subprocess
        import tempfile

        cc = compiler()
        if not cc:
            raise NativeUnavailable("no C compiler found (install cc/gcc, or set CC)")
        base = ["-fPIC", "-shared", *flags]
        native = ["-march=native"] if os.uname().machine in ("x86_64", "AMD64") else []
        with tempfile.TemporaryDirectory(dir=d) as tmp:
            src = Path(tmp) / f"{name}.c"
            src.write_text(source)
            out = Path(tmp) / f"{name}.so"
            err = ""
            for extra in (native, []):
                try:
                    r = subprocess.run([cc, *base, *extra, "-o", str(out), str(src), *libs],
                                       capture_output=True, text=True)
                except OSError as exc:
                    raise NativeUnavailable(f"cannot run the C compiler {cc}: {exc.strerror or exc}") from None
                if r.returncode == 0:
                    break
                err = r.stderr.strip()[:300]
            else:
                raise NativeUnavailable(f"{cc} could not compile {name}: {err}")
            os.chmod(out, 0o755)
            os.replace(out, target)     # atomic: concurrent builders each install a whole file
    _check_private_file(target)
    try:
        return ctypes.CDLL(str(target))
    except OSError:
        if _retry:       # a damaged cached library (disk full mid-write by an older version...): rebuild once
            target.unlink(missing_ok=True)
            return build(name, source, flags=flags, libs=libs, _retry=False)
        raise


def load(name: str, source: str, *, what: str, fallback: str, **kw) -> ctypes.CDLL | None:
    """``build`` or None, with one RuntimeWarning naming ``what`` and the ``fallback`` in use."""
    try:
        return build(name, source, **kw)
    except (NativeUnavailable, OSError) as exc:
        warnings.warn(f"{what} unavailable ({exc}); using {fallback}", RuntimeWarning, stacklevel=3)
        return None


ENV_FLOWS = "TRAFFICSNN_FLOWS_KERNEL"


class Lazy:
    """One C library built on first use (thread-safe), or None where it cannot be: warned once."""

    def __init__(self, name: str, source: Path, *, what: str, fallback: str, setup=None,
                 flags: tuple[str, ...] = ("-O2",), libs: tuple[str, ...] = ()):
        self.name, self.source, self.what, self.fallback = name, Path(source), what, fallback
        self.setup, self.flags, self.libs = setup, flags, libs
        self._lib: ctypes.CDLL | None = None
        self._tried = False
        self.why = ""                   # why the C path is unavailable, once tried
        self._lock = threading.Lock()

    def get(self) -> ctypes.CDLL | None:
        if not self._tried:
            with self._lock:
                if not self._tried:
                    try:
                        lib = build(self.name, self.source.read_text(), flags=self.flags, libs=self.libs)
                    except (NativeUnavailable, OSError) as exc:
                        self.why = str(exc)
                        warnings.warn(f"{self.what} unavailable ({exc}); using {self.fallback}",
                                      RuntimeWarning, stacklevel=2)
                        lib = None
                    if lib is not None and self.setup is not None:
                        try:
                            self.setup(lib)
                        except (NativeUnavailable, AttributeError) as exc:
                            self.why = f"unusable: {exc}"
                            warnings.warn(f"{self.what} unusable ({exc}); using {self.fallback}",
                                          RuntimeWarning, stacklevel=2)
                            lib = None
                    self._lib, self._tried = lib, True
        return self._lib

    def reset(self) -> None:
        """Forget the outcome (tests: build again under another environment)."""
        with self._lock:
            self._lib, self._tried = None, False

    def use(self, kernel: str = "auto") -> bool:
        """Whether to run the C path: ``kernel`` ("auto", "c", "numpy"), else ``$TRAFFICSNN_FLOWS_KERNEL``.
        "c" where it cannot be built is an error naming the fix."""
        if kernel == "auto":
            kernel = os.environ.get(ENV_FLOWS, "").strip().lower() or "auto"
        if kernel not in ("auto", "c", "numpy"):
            raise ValueError(f"kernel must be auto, c or numpy, got {kernel!r} (check {ENV_FLOWS})")
        if kernel == "numpy":
            return False
        if self.get() is None:
            if kernel == "c":
                raise RuntimeError(f"{self.what} was asked for ({ENV_FLOWS}=c or kernel='c') but cannot be "
                                   f"used here ({self.why}); fix that or unset {ENV_FLOWS}")
            return False
        return True
