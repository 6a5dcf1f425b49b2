"""``--ray-address`` before any Ray starts (docs/scale.md, "Which Ray"): an address where no
cluster can be reached is one error naming it (exit status 2), at once, not ``ray.init``
retrying for minutes; a ``ray://`` address without Ray Client says to install it; an address
given to a local run is said to be unused. No test here starts Ray (the checks come before
``ray.init``), and each asserts that none was started."""

from __future__ import annotations

import os
import socket

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from clipeval.cli.main import cli
from clipeval.engine.errors import ClusterError
from clipeval.engine.executors import ray_cluster
from clipeval.engine.executors.ray_cluster import check_reachable, host_port
from datagen import noise_image, write_dataset


@pytest.fixture(autouse=True)
def no_ray_running():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # left by another module: these tests are about connecting
        ray.shutdown()
    yield ray
    assert not ray.is_initialized()


def closed_port(family=socket.AF_INET, host="127.0.0.1") -> int:
    """A port on ``host`` where nothing listens (bound by the OS, then released)."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("one")
    return write_dataset(root, [{"image_path": "a.png", "query": "a photo"}], {"a.png": noise_image(0)})


def unreachable_addresses() -> list[tuple[str, str]]:
    """(address, what the error says about it): the kinds of address no cluster answers at."""
    rows = [
        (f"127.0.0.1:{closed_port()}", "Connection refused"),
        (f"localhost:{closed_port()}", "Connection refused"),
        (f"ray://127.0.0.1:{closed_port()}", "Connection refused"),
        ("no-such-head.invalid:6379", "no-such-head.invalid port 6379"),  # .invalid never resolves (RFC 2606)
    ]
    if ipv6_loopback():
        rows.append((f"[::1]:{closed_port(socket.AF_INET6, '::1')}", "Connection refused"))
    return rows


@pytest.mark.parametrize("how", ["flag", "env"])
@pytest.mark.parametrize("address,says", unreachable_addresses())
def test_an_address_where_nothing_listens_is_one_error_naming_it(data, tmp_path, monkeypatch, address, says, how):
    monkeypatch.setenv("CLIPEVAL_CACHE_DIR", str(tmp_path / "cache"))
    args = ["eval", "--executor", "ray", "--data-dir", str(data), "--output-dir", str(tmp_path / "out")]
    if how == "flag":
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        args += ["--ray-address", address]
    else:
        monkeypatch.setenv("RAY_ADDRESS", address)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"cannot connect to the Ray cluster at {address}" in errors[0] and says in errors[0], errors[0]
    assert lines[lines.index(errors[0]) + 1].startswith("  -> ") and "ray start --head" in result.stderr
    assert not result.stdout and not list((tmp_path / "out").rglob("*.json"))


def test_a_port_that_listens_passes_the_check():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_reachable(f"127.0.0.1:{port}")
        check_reachable(f"ray://127.0.0.1:{port}")
    with pytest.raises(ClusterError, match="Connection refused"):
        check_reachable(f"127.0.0.1:{port}")  # closed again


@pytest.mark.parametrize("address", ["auto", "local", "", "http://h:1/x", "h", "h:", ":6379", "h:port"])
def test_forms_ray_resolves_itself_are_not_probed(address):
    assert host_port(address) is None
    check_reachable(address)  # nothing to connect to: no error


hosts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
)


@settings(max_examples=200, deadline=None)
@given(host=hosts, port=st.integers(1, 65535), client=st.booleans())
def test_host_port_reads_every_address_form_the_config_accepts(host, port, client):
    """``host_port`` against the definition: ``[ray://]HOST:PORT`` with brackets only around an
    IPv6 host; and every such address passes the config's own check."""
    from clipeval.engine.config.task_cfg import _ray_address

    address = f"{'ray://' if client else ''}{host}:{port}"
    assert host_port(address) == (host.strip("[]"), port)
    assert _ray_address(address) == address


def test_ray_client_missing_says_to_install_it(monkeypatch, no_ray_running):
    """A ``ray://`` address whose Ray Client package is missing: the remedy is to install it."""
    ray = no_ray_running
    monkeypatch.setattr(ray_cluster, "check_reachable", lambda address, **kw: None)

    def init(**kwargs):
        raise RuntimeError("Ray Client requires pip package `ray[client]`. If you installed the minimal Ray ...")

    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(ClusterError) as err:
        with ray_cluster.connected("ray://h:10001"):
            pass
    assert "ray://h:10001" in err.value.message and "pip install 'ray[client]'" in err.value.remedy


@pytest.mark.parametrize("how", ["flag", "config"])
def test_an_address_given_to_a_local_run_is_said_to_be_unused(data, tmp_path, monkeypatch, how):
    monkeypatch.setenv("CLIPEVAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "out"
    if how == "flag":
        args = ["eval", "--ray-address", "auto", "--data-dir", str(data), "--output-dir", str(out), "--no-cache"]
    else:
        config = tmp_path / "task.yaml"
        config.write_text(f"eval_backend: RAGEval\neval_config:\n  tool: clip_benchmark\n  eval:\n"
                          f"    models: [demo]\n    dataset_name: [custom]\n    data_dir: {data}\n"
                          f"    output_dir: {out}\n    ray_address: auto\n    no_cache: true\n")
        args = ["run", str(config)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.count("\n") == 1  # the result, computed locally
    assert "ray_address) is not used: this run is local; add --executor ray" in result.stderr, result.stderr
    assert os.environ.get("RAY_ADDRESS") is None


@pytest.mark.parametrize("value,says", [
    ("http://127.0.0.1:8265", "HTTP address"),  # the job-submission address `ray job submit` reads
    (f"127.0.0.1:{closed_port()}", "Connection refused"),
])
def test_an_unusable_ray_address_variable_is_named_with_how_to_fix_it(data, tmp_path, monkeypatch, value, says):
    """$RAY_ADDRESS (not the flag) names the cluster: the remedy says to set or unset it, and
    Ray's own message is not cut in the middle of its list of fixes."""
    monkeypatch.setenv("CLIPEVAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RAY_ADDRESS", value)
    result = CliRunner().invoke(cli, ["eval", "--executor", "ray", "--data-dir", str(data), "--output-dir",
                                      str(tmp_path / "out")])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.startswith(("error: ", "  -> "))]
    assert len(lines) == 2 and value in lines[0] and says in lines[0], result.stderr
    assert not lines[0].endswith(":") and "$RAY_ADDRESS" in lines[1] and "unset it" in lines[1]
