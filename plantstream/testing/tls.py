"""TLS for tests through a real terminator: a throwaway CA and server certificate, and a private
Kafka-protocol broker reachable only through stunnel (Debian's ``stunnel4``).

The broker listens on an internal port and advertises the stunnel port, so after the first
metadata call clients still speak TLS to every broker address they are given; nothing reaches
the broker unencrypted from the outside address.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from plantstream.stack import tansu_binary, wait_port
from plantstream.testing.plugin import free_port


@dataclass(frozen=True, slots=True)
class Pki:
    ca: Path  # the CA that signed the server certificate
    other_ca: Path  # an unrelated CA: a client trusting only it must be refused
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and localhost signed by it, and an unrelated CA:
    ``ca.pem``, ``server.pem``, ``server.key``, ``other-ca.pem`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("plantstream test CA")
    _, other = _ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(directory / "ca.pem", directory / "other-ca.pem", directory / "server.pem", directory / "server.key")
    pki.ca.write_bytes(_pem(ca_cert))
    pki.other_ca.write_bytes(_pem(other))
    pki.cert.write_bytes(_pem(cert))
    pki.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pki.key.chmod(0o600)
    return pki


def stunnel_binary() -> str:
    found = shutil.which("stunnel4") or shutil.which("stunnel")
    if found is None:
        raise RuntimeError("stunnel is not installed (Debian: apt-get install stunnel4; ./dev setup installs it)")
    return found


class TlsKafka:
    """A private Tansu broker (memory storage) whose only advertised address is a stunnel TLS port."""

    def __init__(self, directory: Path, pki: Pki) -> None:
        self.dir = directory
        self.pki = pki
        self.broker_port = free_port()
        self.tls_port = free_port()
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.tls_port}"

    def start(self) -> TlsKafka:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "stunnel.conf"
        conf.write_text(
            "\n".join(
                [
                    "foreground = yes",
                    f"output = {self.dir / 'stunnel.log'}",
                    "debug = notice",
                    "[kafka]",
                    f"accept = 127.0.0.1:{self.tls_port}",
                    f"connect = 127.0.0.1:{self.broker_port}",
                    f"cert = {self.pki.cert}",
                    f"key = {self.pki.key}",
                ]
            )
            + "\n"
        )
        log = self.dir / "broker.log"
        with log.open("wb") as out:
            broker = subprocess.Popen(
                [
                    str(tansu_binary()),
                    "broker",
                    "--listener-url",
                    f"tcp://127.0.0.1:{self.broker_port}",
                    "--advertised-listener-url",
                    f"tcp://127.0.0.1:{self.tls_port}",
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            self._procs.append(broker)
            wait_port(self.broker_port, 30, "private Kafka-protocol broker", broker, log)
            tunnel = subprocess.Popen([stunnel_binary(), str(conf)], stdout=out, stderr=subprocess.STDOUT)
            self._procs.append(tunnel)
        wait_port(self.tls_port, 15, "stunnel", tunnel, self.dir / "stunnel.log")
        return self

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        self._procs.clear()

    def __enter__(self) -> TlsKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
