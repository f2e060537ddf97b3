"""A lock file that holds across hosts on a shared filesystem, with a lease a dead holder loses.

The lock is a file created with ``O_CREAT | O_EXCL``: atomic on local filesystems, NFSv3 and
later (v3, v4.x) and Lustre, unlike ``fcntl``/``flock`` locks, which NFS emulates through a lock
daemon and loses with a client. It holds one JSON line: owner host, pid, a random token and a
lease expiry (seconds since the epoch). The holder rewrites it (temporary file, then
``os.replace``) from a background thread every ``lease / 4`` seconds.

A waiter takes the lock over when

- the holder's lease has expired (``expires`` in the past), or the file has not changed for a
  whole lease by the waiter's own clock (a holder whose host clock runs ahead), or
- the holder runs on this host and its pid is dead (no wait for the lease).

A takeover removes the stale file under a second create-exclusive file (``<lock>.takeover``),
after reading the file again and finding the same token, so two waiters never both delete a
fresh lock. Hosts' clocks must agree to well within ``lease / 2`` (NTP does), and a holder must
not stall longer than a lease (its renewals stop; it logs that it lost the lock).

The host is ``INVERSESCOPE_HOST``, else ``HOSTNAME``, else ``socket.gethostname()``: containers
and test processes on one machine can then act as separate hosts.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0
"""Default lease: a holder that stops renewing loses the lock this long after its last renewal."""


def host_name() -> str:
    """This process's host as locks record it: ``INVERSESCOPE_HOST``, ``HOSTNAME``, or the
    socket's host name."""
    return os.environ.get("INVERSESCOPE_HOST") or os.environ.get("HOSTNAME") or socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class LockLost(RuntimeError):
    """The holder's lease lapsed and another process took the lock over."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    token: str
    expires: float
    raw: str  # the file's text, to tell renewals apart

    @classmethod
    def parse(cls, raw: str) -> Holder | None:
        try:
            d = json.loads(raw)
            return cls(str(d["host"]), int(d["pid"]), str(d["token"]), float(d["expires"]), raw)
        except (ValueError, KeyError, TypeError):
            return None  # empty (being created) or foreign: judged by the file's age


class _Renewed:
    """What a lease and a lease file share: a daemon thread that renews the holding every
    quarter of the lease until ``release`` stops it. ``NOUN`` names the holding in logs."""

    NOUN = "lease"
    lease: float
    path: Any
    host: str
    timeout: float | None
    max_poll: float
    _stop: threading.Event
    _renewer: threading.Thread | None

    def acquire(self) -> None:
        raise NotImplementedError

    def renew(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _hold(self, path, lease: float, poll: float, max_poll: float, timeout) -> None:
        """The settings and state both kinds start from (``lease`` > 0 seconds)."""
        if lease <= 0:
            raise ValueError(f"lease={lease}: expected a positive number of seconds")
        self.path, self.lease, self.poll = path, lease, poll
        self.max_poll, self.timeout = max_poll, timeout
        self.host = host_name()
        self.pid = os.getpid()
        self.token = ""
        self.lost = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _gone(self, holder: Holder) -> str:
        """Why a readable holder no longer holds: its lease expired, or its process died on
        this host; '' while it holds."""
        if time.time() > holder.expires:
            return f"lease expired {time.time() - holder.expires:.0f} s ago"
        if holder.host == self.host and not _pid_alive(holder.pid):
            return f"pid {holder.pid} is dead on this host"
        return ""

    def _wait(
        self, holder: Holder | None, nobody: str, start: float, delay: float, announced: bool
    ) -> tuple[float, bool]:
        """One wait for a holding someone else has: say once whom we wait for (``nobody`` when
        the holder is unreadable), give up after ``timeout``, sleep ``delay``; the next delay
        (backing off to ``max_poll``) and that we announced."""
        if not announced:
            who = f"{holder.host} pid {holder.pid}" if holder else nobody
            log.info("waiting for %s %s held by %s", self.NOUN, self.path, who)
        if self.timeout is not None and time.monotonic() - start > self.timeout:
            raise TimeoutError(f"{self.NOUN} {self.path} still held after {self.timeout} s")
        time.sleep(delay)
        return min(delay * 1.5, self.max_poll), True

    def _start_renewing(self) -> None:
        self._stop.clear()
        self._renewer = threading.Thread(
            target=self._renew_loop, name=f"lease {self.path.name}", daemon=True
        )
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease / 4):
            try:
                self.renew()
            except LockLost as e:
                log.error("%s", e)
                return
            except OSError as e:  # a transient I/O or request error: retry at the next interval
                log.warning("renewing %s %s failed: %s", self.NOUN, self.path, e)


class LeaseLock(_Renewed):
    """Exclusive lock on ``path`` across processes and hosts; use as a context manager."""

    NOUN = "lock"

    def __init__(
        self,
        path: Path | str,
        lease: float = LEASE_SECONDS,
        poll: float = 0.2,
        max_poll: float = 2.0,
        timeout: float | None = None,
    ):
        self._hold(Path(path), lease, poll, max_poll, timeout)

    # --- the file ---------------------------------------------------------------------------

    def _content(self) -> str:
        expires = time.time() + self.lease
        body = {"host": self.host, "pid": self.pid, "token": self.token, "expires": expires}
        return json.dumps(body) + "\n"

    def _read(self) -> tuple[Holder | None, str | None, float | None]:
        """(holder, raw text, mtime) of the current lock file; raw ``None`` when absent."""
        try:
            with self.path.open(encoding="utf-8") as f:
                raw = f.read()
                mtime = os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None, None, None
        return Holder.parse(raw), raw, mtime

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, self._content().encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def _stale(self, holder: Holder | None, mtime: float | None, unchanged_for: float) -> str:
        """Why the current holder has lost the lock, or ``""`` when it still holds it."""
        if unchanged_for > self.lease:
            return f"not renewed for {unchanged_for:.0f} s"
        if holder is None:
            # being written right now, or garbage: give it a lease from its last write
            if mtime is not None and time.time() > mtime + self.lease:
                return "unreadable and older than a lease"
            return ""
        return self._gone(holder)

    def _take_over(self, stale_raw: str, why: str) -> None:
        """Remove the lock file if it still holds ``stale_raw``, under ``<lock>.takeover``."""
        guard = self.path.with_name(self.path.name + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):  # a taker that died mid-takeover
                if time.time() - guard.stat().st_mtime > self.lease:
                    guard.unlink()
            return
        os.close(fd)
        try:
            _, raw, _ = self._read()
            if raw == stale_raw:
                log.warning("taking over lock %s (%s): %s", self.path, why, raw.strip())
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
        finally:
            with contextlib.suppress(FileNotFoundError):
                guard.unlink()

    # --- acquire, renew, release ------------------------------------------------------------

    def acquire(self) -> None:
        self.token = secrets.token_hex(16)
        self.lost = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        delay = self.poll
        seen: tuple[str | None, float] = (None, time.monotonic())
        announced = False
        while not self._try_create():
            holder, raw, mtime = self._read()
            if raw is None:
                continue  # released between our create and our read: try again at once
            if raw != seen[0]:
                seen = (raw, time.monotonic())
            why = self._stale(holder, mtime, time.monotonic() - seen[1])
            if why:
                self._take_over(raw, why)
                continue
            delay, announced = self._wait(holder, "a starting holder", start, delay, announced)
        self._start_renewing()

    def renew(self) -> None:
        """Push the lease expiry forward; raises ``LockLost`` when the file is not ours."""
        holder, _, _ = self._read()
        if holder is None or holder.token != self.token:
            self.lost = True
            raise LockLost(f"lock {self.path} was taken over while held (lease lapsed)")
        tmp = self.path.with_name(f".{self.path.name}.{self.token}.tmp")
        tmp.write_text(self._content(), encoding="utf-8")
        os.replace(tmp, self.path)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        holder, _, _ = self._read()
        if holder is not None and holder.token == self.token:
            try:
                self.path.unlink()
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
        else:
            log.error("lock %s was no longer ours at release", self.path)


class ObjectLease(_Renewed):
    """The same lock on object storage, where nothing can be created exclusively but a put can
    be conditional: the lease is one object holding the same JSON line as the file above.

    - acquire: put it only if absent (``If-None-Match: *``); a waiter that finds it stale puts
      its own record only if the object is still the version it judged (``If-Match`` on the
      ETag, and the generation on GCS): of several waiters exactly one wins, no guard needed;
    - renew every ``lease / 4`` seconds with ``If-Match`` on the ETag of our last put: a
      renewal that fails means another process took the lease over (``LockLost``);
    - release: put an expired record with ``If-Match`` (a delete would race a waiter's
      takeover, and S3 deletes are not conditional everywhere), so the next taker overwrites it.

    Stale means what it means for the file: ``expires`` (the holder's clock) is past by the
    waiter's clock, or the object's ETag has not changed for a whole lease by the waiter's own
    monotonic clock, or the holder ran on this host and its pid is dead. The clock assumption:
    hosts' wall clocks agree to well within ``lease / 2`` (NTP); a waiter whose clock runs
    ahead by more than that could take a live lease early, one whose clock lags waits at most
    one lease longer (the monotonic rule needs no clock agreement at all).
    """

    def __init__(
        self,
        path,
        lease: float = LEASE_SECONDS,
        poll: float = 0.2,
        max_poll: float = 2.0,
        timeout: float | None = None,
    ):
        self._hold(path, lease, poll, max_poll, timeout)  # path: a storage.buckets.ObjectPath
        self._tag = None
        self._lock = threading.Lock()

    def _content(self, expires: float | None = None) -> bytes:
        if expires is None:
            expires = time.time() + self.lease
        body = {"host": self.host, "pid": self.pid, "token": self.token, "expires": expires}
        return (json.dumps(body) + "\n").encode()

    def _read(self):
        """(holder, raw text, tag) of the lease object; raw ``None`` when absent."""
        try:
            data, tag = self.path.read_tagged()
        except FileNotFoundError:
            return None, None, None
        raw = data.decode("utf-8", "replace")
        return Holder.parse(raw), raw, tag

    def _stale(self, holder: Holder | None, unchanged_for: float) -> str:
        if unchanged_for > self.lease:
            return f"not renewed for {unchanged_for:.0f} s"
        if holder is None:
            return ""  # foreign content: judged by how long it stays unchanged
        if holder.expires == 0.0:
            return "released"
        return self._gone(holder)

    def acquire(self) -> None:
        from inversescope.storage.buckets import Changed

        self.token = secrets.token_hex(16)
        self.lost = False
        start = time.monotonic()
        delay = self.poll
        seen: tuple[Any, float] = (None, time.monotonic())
        announced = False
        while True:
            try:
                self._tag = self.path.create(self._content())
                break
            except FileExistsError:
                pass
            holder, raw, tag = self._read()
            if raw is None:
                continue  # released and removed meanwhile: create again at once
            if tag != seen[0]:
                seen = (tag, time.monotonic())
            why = self._stale(holder, time.monotonic() - seen[1])
            if why:
                try:
                    self._tag = self.path.replace(self._content(), tag)
                except (Changed, FileNotFoundError):
                    continue  # another waiter took it, or it was removed: look again
                if why != "released":
                    log.warning("took over lease %s (%s): %s", self.path, why, raw.strip())
                break
            delay, announced = self._wait(holder, "an unknown holder", start, delay, announced)
        self._start_renewing()

    def renew(self) -> None:
        """Push the expiry forward if the lease is still ours (``If-Match``), else
        ``LockLost``. A commit calls it last, so a holder that lost its lease never commits."""
        from inversescope.storage.buckets import Changed

        with self._lock:
            if self.lost:
                raise LockLost(f"lease {self.path} was taken over while held (lease lapsed)")
            try:
                self._tag = self.path.replace(self._content(), self._tag)
            except (Changed, FileNotFoundError) as e:
                self.lost = True
                raise LockLost(f"lease {self.path} was taken over while held (lease lapsed)") from e

    def release(self) -> None:
        from inversescope.storage.buckets import Changed

        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        with self._lock:
            if self.lost:
                log.error("lease %s was no longer ours at release", self.path)
                return
            try:
                self._tag = self.path.replace(self._content(expires=0.0), self._tag)
            except (Changed, FileNotFoundError):
                log.error("lease %s was no longer ours at release", self.path)


def lease_for(path, **kwargs) -> LeaseLock | ObjectLease:
    """The lock at ``path``: a lease file on a filesystem, a lease object in a bucket."""
    from inversescope.storage.files import is_remote

    return ObjectLease(path, **kwargs) if is_remote(path) else LeaseLock(path, **kwargs)
