"""Connecting to a Ray cluster for a run, and keeping Ray's own output in its place.

``ray_address`` (``--ray-address``) as Ray reads it: ``auto`` finds a running cluster (the
``RAY_ADDRESS`` variable, else the head node ``ray start --head`` started on this machine),
``HOST:PORT`` is a head node's address, ``ray://HOST:PORT`` a Ray Client server; unset, a
cluster named by ``RAY_ADDRESS`` is used, else a Ray instance is started on this machine for the
run and stopped after it. A process that has called ``ray.init`` already keeps its connection
(and it is left open).

Ray writes to the driver's console on its own: worker output, Ray Data's progress bars and
execution plans, and the errors raylets report (a worker that died), which it prints to stdout;
during a run those go to stderr (:func:`raylet_errors_to_stderr`). During a run here the workers' output stays in the Ray logs of each node
(``log_to_driver=False``; ``/tmp/ray/session_latest/logs``), Ray Data draws no bars (the run's own
progress line counts the rows), and Ray's loggers pass only warnings to the console; the
errors of failed blocks are collected (:class:`RayDataLog`) for the one error the run ends with,
instead of being printed as tracebacks. stdout stays for results.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import warnings
from typing import Iterator

from ..errors import ConfigError
from ..errors import ClusterError

log = logging.getLogger(__name__)

RAY_EXTRA = "pip install 'clipeval[ray]'"
# Ray Data warnings about settings made here on purpose (its bars are off: the run draws its own)
QUIET_MESSAGES = ("Progress bars disabled",)
# Object store of a Ray instance started for a run: Ray's default (30% of memory) unless set.
ENV_OBJECT_STORE = "CLIPEVAL_RAY_OBJECT_STORE_BYTES"
# How long the head node's port may take to accept a TCP connection before the address is given up
# (ray.init itself keeps retrying an address where nothing listens for minutes).
CONNECT_TIMEOUT_S = 10.0
CONNECT_REMEDY = ("start the head node with `ray start --head` and pass its address with --ray-address (or auto), "
                  "or leave it out to run Ray on this machine")
ENV_REMEDY = ("$RAY_ADDRESS names that cluster: set it to the head node's HOST:PORT as `ray start --head` prints "
              "it (or auto), or unset it to run Ray on this machine")
CLIENT_REMEDY = ("install Ray Client with pip install 'ray[client]' (the same Ray version as the cluster's), or give "
                 "the head node's HOST:PORT as `ray start --head` prints it")


def host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``HOST:PORT`` or ``ray://HOST:PORT`` address (``[::1]:6379`` for
    IPv6), ``None`` for ``auto``, ``local`` or anything else Ray resolves itself."""
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in rest:
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S, remedy: str = CONNECT_REMEDY) -> None:
    """Raise :class:`ClusterError` naming ``address`` when it is ``HOST:PORT`` (or
    ``ray://HOST:PORT``) and no TCP connection to it opens within ``timeout`` seconds (the host
    does not resolve, nothing listens on the port, or it does not answer). ``ray.init`` on such an
    address waits for minutes, printing Ray's retries; other forms are left to Ray."""
    target = host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except (OSError, OverflowError) as exc:  # OverflowError: a port above 65535 (from $RAY_ADDRESS)
        if isinstance(exc, TimeoutError):
            why = f"no answer within {timeout:g} s"
        else:
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: nothing accepts connections on "
                           f"{target[0]} port {target[1]} ({why})", remedy) from None


def node_cpus(ray) -> list[int]:
    """The CPUs of each alive node of the cluster that has any (``[1]`` when none reports CPUs)."""
    cpus = [int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    return [c for c in cpus if c > 0] or [1]


def cap_threads(asked: int | None, largest: int, default: int, who: str) -> tuple[int, str | None]:
    """The threads (and CPUs) each ``who`` (a tower actor, a pair task) runs: ``asked`` (``default``
    when unset), at most ``largest``, the CPUs of the largest node (no node could hold more); and
    the warning saying so when that cut what was asked for (``None`` otherwise)."""
    threads = min(asked or default, largest)
    if asked and asked > largest:
        return threads, (f"{asked} threads were asked for; the largest node has {largest} CPUs, so each {who} "
                         f"runs {threads}")
    return threads, None


def import_ray():
    """``ray`` with Ray Data, or a :class:`ConfigError` that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--executor ray (config executor: ray) needs Ray Data, which cannot be imported ({exc})",
                          f"install it with {RAY_EXTRA}, or use --executor local") from None
    return ray


@contextlib.contextmanager
def connected(address: str | None = None) -> Iterator[object]:
    """Connect to (or start) a Ray cluster for the duration of the block; yields the ``ray``
    module. A connection this opened is closed (and a Ray instance it started is stopped) when
    the block ends, also on an error. Raises :class:`ClusterError` when the cluster cannot be
    reached, :class:`ConfigError` when Ray is not installed."""
    ray = import_ray()
    opened = False
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        if address:
            kwargs["address"] = address
        elif not os.environ.get("RAY_ADDRESS"):
            # a Ray of its own: plain ray.init() would join a cluster `ray start` left on this machine
            kwargs["address"] = "local"
            if os.environ.get(ENV_OBJECT_STORE):
                kwargs["object_store_memory"] = int(os.environ[ENV_OBJECT_STORE])
        given = address or os.environ.get("RAY_ADDRESS")
        remedy = CONNECT_REMEDY if address or not given else ENV_REMEDY
        if given:
            check_reachable(given, remedy=remedy)
        try:
            ray.init(**kwargs)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError ...
            where = given or "this machine"
            if given and not address:
                where = f"{given} ($RAY_ADDRESS)"
            message = first_line(exc)
            if message.endswith(":") and ". " in message:  # Ray's "... To fix this, either:" with the list cut off
                message = message[:message.rindex(". ") + 1]
            raise ClusterError(f"cannot connect to the Ray cluster at {where}: {message}",
                               CLIENT_REMEDY if "ray[client]" in message else remedy) from None
        opened = True
        resources = ray.cluster_resources()
        log.info("Ray cluster: %d node(s), %g CPU, %g GPU", len([n for n in ray.nodes() if n.get("Alive")]),
                 resources.get("CPU", 0), resources.get("GPU", 0))
    elif address:
        log.info("using the Ray connection this process has already opened (--ray-address %s is not used)", address)
    try:
        with raylet_errors_to_stderr():
            yield ray
    finally:
        if opened:
            ray.shutdown()


@contextlib.contextmanager
def raylet_errors_to_stderr() -> Iterator[None]:
    """For the block: the errors the raylets report to the driver (a worker that died, a task
    that is retried), which Ray's driver prints from a thread of its own to ``sys.stdout``
    (``ray._private.worker.listen_error_messages``), go to stderr: stdout carries results
    only. A Ray without that function is left as it is."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        yield
        return
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None:
        yield
        return

    def to_stderr(data, *args, **kwargs):
        if isinstance(data, dict):
            data = {**data, "is_err": True}
        return original(data, *args, **kwargs)

    ray_worker.print_to_stdstream = to_stderr
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = original


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text (Ray's errors carry tracebacks)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def root_cause(exc: BaseException) -> BaseException:
    """The exception a worker raised, out of Ray's wrappers (``RayTaskError`` and Ray Data's
    ``UserCodeException``) and ``__cause__`` chains."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            exc = cause
            continue
        if exc.__cause__ is not None:
            exc = exc.__cause__
            continue
        break
    return exc


class RayDataLog(logging.Handler):
    """While a Dataset runs: collects the errors Ray Data logs for failed blocks (``errors``: one
    line each) and keeps Ray Data's console handler to warnings without tracebacks."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.errors: list[str] = []
        self._logger = logging.getLogger("ray.data")
        self._filtered: list[logging.Handler] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        self.errors.append(first_line(root_cause(exc)) if exc is not None else record.getMessage())

    @staticmethod
    def _console(record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.exc_info:
            return False
        return not record.getMessage().startswith(QUIET_MESSAGES)

    def __enter__(self) -> "RayDataLog":
        self._logger.addHandler(self)
        for handler in self._logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler is not self:
                handler.addFilter(self._console)
                self._filtered.append(handler)
        return self

    def __exit__(self, *exc) -> None:
        self._logger.removeHandler(self)
        for handler in self._filtered:
            handler.removeFilter(self._console)
        self._filtered.clear()


@contextlib.contextmanager
def data_context(**settings) -> Iterator[object]:
    """Ray Data's current ``DataContext`` with ``settings`` for the block (Datasets created in it
    copy them), restored afterwards; progress bars off. Settings this Ray version does not have
    are left out. Ray Data's warnings about its own deprecated settings, which copying the context
    raises, are not shown."""
    from ray.data import DataContext

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r"`\w+` is deprecated")
        ctx = DataContext.get_current()
        settings = {"enable_progress_bars": False, "print_on_execution_start": False, **settings}
        settings = {k: v for k, v in settings.items() if hasattr(ctx, k)}
        old = {k: getattr(ctx, k) for k in settings}
        for k, v in settings.items():
            setattr(ctx, k, v)
        try:
            yield ctx
        finally:
            for k, v in old.items():
                setattr(ctx, k, v)
