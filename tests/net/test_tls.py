"""TLS with mutual authentication: the transport over TLS, every way a handshake can be refused
(counted as "tls", never fatal), the checks of the certificate files, the CLI flags, and TLS
nodes in separate processes.

The certificates are made here with trustme (the trio project's library of test certificates):
a CA, a certificate per node naming 127.0.0.1 (an IP subject alternative name), and certificates
from another CA and for another address.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shlex
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trustme
from cluster import assert_converged, cli, env_with, local_topology
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from gossipfl.cli import app
from gossipfl.errors import ConfigError
from gossipfl.net.tcp import TcpTransport, Timeouts
from gossipfl.net.tls import TlsContexts, TlsFiles, TlsRefused, check_identity, load_tls, tls_files
from gossipfl.net.wire import TAG_BYTES, Frame, ModelSpec, encode_frame, encode_head, payload_views

KEY_TEXT = "tls-test-key-" + "0123456789abcdef" * 2  # the shared key: TLS comes on top of it
KEY = KEY_TEXT.encode()
HOST = "127.0.0.1"
# 1.6 MB frames: over CHUNK_BYTES (1 MiB), so the chunked read path runs over TLS too
SPEC = ModelSpec(paths=("w", "b"), shapes=((300_000,), (100_000,)), dtypes=("<f4", "<f4"))
FAST = Timeouts(connect=2.0, backoff_min=0.01, backoff_max=0.1)


# ----------------------------------------------------------------------------- certificates


@dataclass
class Pki:
    """PEM files in `dir`: ca.pem and node-<id>.pem/.key of the CA (node 0-3, for 127.0.0.1), and
    `other` (127.0.0.1, from another CA), and from the CA `wrong-host` (127.0.0.2), `named`
    (localhost) and `server-only` (127.0.0.1, extendedKeyUsage serverAuth only)."""

    dir: Path

    def files(self, name: str, ca: str = "ca.pem") -> TlsFiles:
        return TlsFiles(str(self.dir / f"{name}.pem"), str(self.dir / f"{name}.key"), str(self.dir / ca))

    def contexts(self, name: str) -> TlsContexts:
        return load_tls(self.files(name))


def _write_leaf(ca: trustme.CA, directory: Path, name: str, *hosts: str) -> trustme.LeafCert:
    leaf = ca.issue_cert(*hosts)
    leaf.cert_chain_pems[0].write_to_path(str(directory / f"{name}.pem"))
    leaf.private_key_pem.write_to_path(str(directory / f"{name}.key"))
    return leaf


def _write_server_only_leaf(ca: trustme.CA, directory: Path, name: str) -> None:
    """A certificate for 127.0.0.1 whose extendedKeyUsage allows serverAuth only (trustme's allow
    both), signed with the CA's key through `cryptography`."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(ca_key, hashes.SHA256()))
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    other_ca.cert_pem.write_to_path(str(directory / "other-ca.pem"))
    for i in range(4):
        _write_leaf(ca, directory, f"node-{i}", HOST)
    _write_leaf(other_ca, directory, "other", HOST)
    _write_leaf(ca, directory, "wrong-host", "127.0.0.2")
    _write_leaf(ca, directory, "named", "localhost")
    _write_server_only_leaf(ca, directory, "server-only")
    return Pki(directory)


# ----------------------------------------------------------------------------- transports in one trio run


def leaves(value: float) -> list[np.ndarray]:
    return [np.full(300_000, value, np.float32), np.arange(100_000, dtype=np.float32) + value]


def meta(seq: int, sender: int) -> dict[str, Any]:
    return {"sender": sender, "incarnation": 7, "seq": seq, "step": seq, "weight": 0.5 + seq}


def frame_size(seq: int, sender: int) -> int:
    return len(encode_head(SPEC, **meta(seq, sender))) + SPEC.nbytes + TAG_BYTES


@dataclass
class Node:
    t: TcpTransport
    inbox: list = field(default_factory=list)  # what `deliver` got: frames and refusals

    def send(self, peer: int, seq: int) -> bool:
        return self.t.send(peer, encode_head(SPEC, **meta(seq, self.t.node_id)), payload_views(leaves(seq)))

    def refusals(self) -> list[TlsRefused]:
        return [r for r in self.inbox if isinstance(r, TlsRefused)]

    def frames(self) -> list[Frame]:
        return [f for f in self.inbox if isinstance(f, Frame)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


async def start(nursery: trio.Nursery, node_id: int, peers: dict[int, int], tls: TlsContexts | None,
                timeouts: Timeouts = FAST, port: int = 0) -> Node:
    """A transport listening on 127.0.0.1:`port` (0: a free one), sending to `peers` ({id: port}), started."""
    inbox: list = []
    t = TcpTransport(node_id, {p: (HOST, q) for p, q in peers.items()}, SPEC, KEY, inbox.append,
                     listen=(HOST, port), timeouts=timeouts, tls=tls)
    await nursery.start(t.run)
    return Node(t, inbox)


async def until(condition: Callable[[], bool], step: float = 0.01) -> None:
    while not condition():
        await trio.sleep(step)


def run(body: Callable[[trio.Nursery], Awaitable[None]], seconds: float = 10.0) -> None:
    """Runs `body(nursery)` under trio, failing after `seconds` of real time instead of hanging."""

    async def main() -> None:
        with trio.fail_after(seconds):
            async with trio.open_nursery() as nursery:
                await body(nursery)
                nursery.cancel_scope.cancel()

    trio.run(main)


def check_frame(f: Any, seq: int, sender: int) -> None:
    assert isinstance(f, Frame) and (f.sender, f.seq, f.weight) == (sender, seq, 0.5 + seq)
    for got, want in zip(f.leaves, leaves(seq), strict=True):
        np.testing.assert_array_equal(got, want)


async def closed_within(stream: trio.abc.Stream, seconds: float) -> float:
    """Seconds until the other side closed `stream`; fails after `seconds`."""
    start_time = trio.current_time()
    with trio.fail_after(seconds):
        try:
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError:  # a reset, or (TLS) the refusal's alert
            pass
    return trio.current_time() - start_time


def test_frames_flow_both_ways_over_mutual_tls(pki: Pki) -> None:
    async def body(nursery: trio.Nursery) -> None:
        port_a = free_port()
        b = await start(nursery, 1, {0: port_a}, pki.contexts("node-1"))
        a = await start(nursery, 0, {1: b.t.port}, pki.contexts("node-0"), port=port_a)
        await until(lambda: a.t.is_up(1) and b.t.is_up(0))
        assert a.t.tls and b.t.tls
        for seq in range(3):
            assert a.send(1, seq)
            await until(lambda: len(b.inbox) > seq)  # noqa: B023 - used before seq moves on
        assert b.send(0, 9)
        await until(lambda: a.inbox and b.t.stats.frames_sent == 1)
        for seq, f in enumerate(b.inbox):
            check_frame(f, seq, sender=0)
        check_frame(a.inbox[0], 9, sender=1)
        sizes = sum(frame_size(seq, 0) for seq in range(3))
        assert (a.t.stats.frames_sent, a.t.stats.bytes_sent) == (3, sizes)
        assert (b.t.stats.frames_received, b.t.stats.bytes_received) == (3, sizes)
        assert not a.t.stats.rejected and not b.t.stats.rejected

    run(body)


def test_a_client_certificate_from_another_ca_is_refused_and_the_server_keeps_serving(pki: Pki) -> None:
    async def body(nursery: trio.Nursery) -> None:
        b = await start(nursery, 1, {}, pki.contexts("node-1"))
        # a trusts the right CA, so it accepts b; b does not accept a's certificate
        stranger = await start(nursery, 0, {1: b.t.port}, load_tls(pki.files("other")))
        await until(lambda: b.t.stats.rejected["tls"] >= 2)  # refused, and refused again after a backoff
        assert "certificate verify failed" in str(b.refusals()[0]), b.refusals()
        # (trio's listener closes without sending its alert: the stranger just sees its link close)
        assert not stranger.t.stats.rejected
        friend = await start(nursery, 2, {1: b.t.port}, pki.contexts("node-2"))
        await until(lambda: friend.t.is_up(1))
        assert friend.send(1, 4)
        await until(lambda: b.frames())
        check_frame(b.frames()[0], 4, sender=2)
        assert all(f.sender == 2 for f in b.frames())  # nothing of the stranger's got through
        assert b.t.stats.rejected.keys() == {"tls"}

    run(body)


def test_a_client_without_a_certificate_is_refused(pki: Pki) -> None:
    async def body(nursery: trio.Nursery) -> None:
        b = await start(nursery, 1, {}, pki.contexts("node-1"))
        anonymous = ssl.create_default_context(cafile=str(pki.dir / "ca.pem"))  # trusts the CA, has no cert
        tcp = await trio.open_tcp_stream(HOST, b.t.port)
        stream = trio.SSLStream(tcp, anonymous, server_hostname=HOST)
        try:
            await stream.do_handshake()  # TLS 1.3: the client's half completes; the refusal follows
            await stream.send_all(encode_frame(SPEC, leaves(1), KEY, **meta(1, 0)))
        except trio.BrokenResourceError:
            pass
        await closed_within(stream, 2.0)
        await trio.aclose_forcefully(stream)
        await until(lambda: b.t.stats.rejected["tls"] == 1)
        assert "certificate" in str(b.refusals()[0]) and not b.frames()

    run(body)


def test_plain_tcp_and_garbage_sent_to_a_tls_port_are_refused_and_counted(pki: Pki) -> None:
    blobs = [encode_frame(SPEC, leaves(1), KEY, **meta(1, 0)), np.random.default_rng(0).bytes(300)]

    async def body(nursery: trio.Nursery) -> None:
        b = await start(nursery, 1, {}, pki.contexts("node-1"))
        for n, blob in enumerate(blobs, 1):
            async with await trio.open_tcp_stream(HOST, b.t.port) as stream:
                try:
                    await stream.send_all(blob)
                except trio.BrokenResourceError:
                    pass
                await closed_within(stream, 2.0)
            await until(lambda: b.t.stats.rejected["tls"] == n)  # noqa: B023
        assert "not TLS" in str(b.refusals()[0]), b.refusals()  # a frame where a ClientHello should be
        async with await trio.open_tcp_stream(HOST, b.t.port) as stream:
            pass  # connects and hangs up without a word: not a refusal, as on plain TCP
        good = await start(nursery, 0, {1: b.t.port}, pki.contexts("node-0"))
        await until(lambda: good.t.is_up(1))
        assert good.send(1, 2)
        await until(lambda: b.frames())
        check_frame(b.frames()[0], 2, sender=0)
        assert dict(b.t.stats.rejected) == {"tls": 2} and len(b.refusals()) == 2

    run(body)


def test_a_tls_node_and_a_plain_node_do_not_talk(pki: Pki) -> None:
    async def body(nursery: trio.Nursery) -> None:
        plain = await start(nursery, 1, {}, None)
        secure = await start(nursery, 0, {1: plain.t.port}, pki.contexts("node-0"))
        await until(lambda: plain.t.stats.rejected["bad_magic"] >= 2)  # a ClientHello is not a frame
        assert not secure.t.is_up(1) and not plain.frames()

    run(body)


def test_a_stalled_handshake_is_cut_off_and_counted(pki: Pki) -> None:
    async def body(nursery: trio.Nursery) -> None:
        b = await start(nursery, 1, {}, pki.contexts("node-1"), Timeouts(connect=0.3, idle=10.0))
        async with await trio.open_tcp_stream(HOST, b.t.port) as stream:  # connects, then says nothing
            assert 0.25 < await closed_within(stream, 2.0) < 1.0  # long before the idle timeout
        await until(lambda: b.t.stats.rejected["tls"] == 1)
        assert "stalled" in str(b.refusals()[0])

    run(body)


def test_the_dialler_checks_that_the_certificate_names_the_address_it_dialled(pki: Pki) -> None:
    async def body(nursery: trio.Nursery) -> None:
        impostor = await start(nursery, 1, {}, pki.contexts("wrong-host"))  # signed by the CA, for 127.0.0.2
        a = await start(nursery, 0, {1: impostor.t.port}, pki.contexts("node-0"))
        await until(lambda: a.t.stats.rejected["tls"] >= 1)
        assert "IP address mismatch" in str(a.refusals()[0]), a.refusals()
        assert not a.t.is_up(1) and not impostor.frames()

    run(body)


# ----------------------------------------------------------------------------- the files and their checks


def test_check_identity_accepts_the_right_certificate_and_says_what_is_wrong_with_others(pki: Pki) -> None:
    check_identity(pki.contexts("node-0"), 0, HOST)
    check_identity(pki.contexts("named"), 0, "localhost")  # a host name: a DNS name in the certificate
    with pytest.raises(ConfigError, match=r"does not name '127\.0\.0\.1'.*subjectAltName IP:127\.0\.0\.1"):
        check_identity(pki.contexts("wrong-host"), 0, HOST)
    with pytest.raises(ConfigError, match="subjectAltName DNS:node3.lan"):
        check_identity(pki.contexts("node-3"), 3, "node3.lan")
    with pytest.raises(ConfigError, match="does not verify against the CA"):
        check_identity(load_tls(pki.files("other")), 0, HOST)
    with pytest.raises(ConfigError, match="refused as a client certificate.*needs extendedKeyUsage clientAuth"):
        check_identity(pki.contexts("server-only"), 0, HOST)


def test_tls_files_are_all_or_nothing() -> None:
    assert tls_files(None, None, None) is None
    with pytest.raises(ConfigError, match="missing --tls-key and --tls-ca"):
        tls_files("c.pem", None, None)
    assert TlsFiles("d/node-{id}.pem", "d/node-{id}.key", "d/ca.pem").for_node(3) == \
        TlsFiles("d/node-3.pem", "d/node-3.key", "d/ca.pem")


def test_bad_files_are_named_with_what_to_do(pki: Pki, tmp_path: Path) -> None:
    d = pki.dir
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    key = serialization.load_pem_private_key((d / "node-0.key").read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    cases = {
        "cannot read --tls-cert file": TlsFiles(str(tmp_path / "missing.pem"), str(d / "node-0.key"),
                                                str(d / "ca.pem")),
        "--tls-cert file .* holds no PEM certificate": TlsFiles(str(junk), str(d / "node-0.key"), str(d / "ca.pem")),
        "--tls-key file .* holds no PEM private key": TlsFiles(str(d / "node-0.pem"), str(junk), str(d / "ca.pem")),
        "--tls-ca file .* holds no PEM CA certificate": TlsFiles(str(d / "node-0.pem"), str(d / "node-0.key"),
                                                                 str(d / "node-0.key")),
        "does not belong to the certificate": TlsFiles(str(d / "node-0.pem"), str(d / "node-1.key"),
                                                       str(d / "ca.pem")),
        "is encrypted; gossipfl needs an unencrypted key": TlsFiles(str(d / "node-0.pem"), str(encrypted),
                                                                    str(d / "ca.pem")),
    }
    for message, files in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_tls(files)


# ----------------------------------------------------------------------------- the command line


def invoke(*args: object) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(result: Any) -> str:
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_node_flags_are_checked_before_the_node_starts(pki: Pki, tmp_path: Path) -> None:
    topo, _ = local_topology(tmp_path, 3, rounds=10, gossip={})
    out = tmp_path / "run"
    base = ["node", "--topology", topo, "--id", 0, "--insecure", "--out", out]
    d = pki.dir
    assert "--tls-key and --tls-ca" in one_error_line(invoke(*base, "--tls-cert", d / "node-0.pem"))
    line = one_error_line(invoke(*base, "--tls-cert", d / "node-0.pem", "--tls-key", d / "node-1.key",
                                 "--tls-ca", d / "ca.pem"))
    assert "does not belong" in line
    line = one_error_line(invoke(*base, "--tls-cert", d / "wrong-host.pem", "--tls-key", d / "wrong-host.key",
                                 "--tls-ca", d / "ca.pem"))
    assert "node 0's certificate" in line and "subjectAltName IP:127.0.0.1" in line
    line = one_error_line(invoke(*base[:3], "--ids", "0-1", *base[5:], "--tls-cert", d / "node-{id}.pem",
                                 "--tls-key", d / "node-{id}.key", "--tls-ca", d / "other-ca.pem"))
    assert "node 0's certificate" in line and "does not verify against the CA" in line
    assert not out.exists()  # refused before anything was written


def test_launch_tls_dir(pki: Pki, tmp_path: Path) -> None:
    topo, _ = local_topology(tmp_path, 3, rounds=10, gossip={})
    empty = tmp_path / "no-certs"
    empty.mkdir()
    line = one_error_line(invoke("launch", topo, "--out", tmp_path / "run", "--tls-dir", empty))
    assert "--tls-dir" in line and "node-0.pem" in line
    assert not (tmp_path / "run").exists()
    result = invoke("launch", topo, "--ssh", "--dry-run", "--tls-dir", "certs")
    assert result.exit_code == 0, result.output
    ssh = [line for line in result.stdout.splitlines() if line.startswith("ssh ")]
    assert len(ssh) == 1, result.stdout  # one host, 127.0.0.1, over ssh
    command = next(a for a in shlex.split(ssh[0]) if "gossipfl node" in a)
    remote = shlex.split(command.split("&&", 1)[1])  # what runs in --remote-dir
    flags = {flag: remote[remote.index(flag) + 1] for flag in ("--tls-cert", "--tls-key", "--tls-ca")}
    assert flags == {"--tls-cert": "certs/node-{id}.pem", "--tls-key": "certs/node-{id}.key",
                     "--tls-ca": "certs/ca.pem"}, ssh[0]
    result = invoke("launch", topo, "--dry-run", "--tls-dir", pki.dir)  # loopback: one process per node
    assert result.exit_code == 0, result.output
    lines = [shlex.split(line) for line in result.stdout.splitlines() if " node " in line]
    assert len(lines) == 3, result.stdout
    for argv in lines:
        assert argv[argv.index("--tls-cert") + 1] == str(pki.dir / "node-{id}.pem"), argv
        assert argv[argv.index("--tls-ca") + 1] == str(pki.dir / "ca.pem"), argv


# ----------------------------------------------------------------------------- real processes


def test_tls_nodes_in_separate_processes_converge_without_rejections(pki: Pki, tmp_path: Path, procs: Any) -> None:
    """Three `python -m gossipfl node` processes, each with its own certificate and key and the CA,
    converge over mutual TLS and refuse nothing."""
    n = 3
    topo, _ = local_topology(tmp_path, n, rounds=150, gossip={"snapshot_every": 10, "step_interval": 0.005})
    out = tmp_path / "run"
    env = env_with(GOSSIPFL_KEY=KEY_TEXT)
    nodes = [procs.start(cli("node", "--topology", topo, "--id", i, "--out", out, "--no-merge",
                             "--tls-cert", pki.dir / f"node-{i}.pem", "--tls-key", pki.dir / f"node-{i}.key",
                             "--tls-ca", pki.dir / "ca.pem"), f"node-{i}", env=env) for i in range(n)]
    for i, proc in enumerate(nodes):
        assert procs.wait(proc, timeout=150) == 0, f"node {i}:\n{procs.tail(proc)}"
    summary = assert_converged(out, n)
    assert summary["frames"]["rejected"] == {} and summary["tls"] is True, summary["frames"]
    for i, proc in enumerate(nodes):
        node = json.loads((out / f"node-{i}" / "summary.json").read_text())
        assert node["tls"] is True and node["rejected"] == {} and node["frames_accepted"] >= 2, node
        assert json.loads((out / f"node-{i}" / "node.json").read_text())["tls"] is True
        log = procs.tail(proc, 100)
        assert f"node {i}: TLS on, certificate {pki.dir / f'node-{i}.pem'}, CA {pki.dir / 'ca.pem'}" in log, log
        assert "Traceback" not in log
