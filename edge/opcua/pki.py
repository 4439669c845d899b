"""OPC-UA application certificates: the agent's own (self-signed, OPC 10000-6 6.2.2 profile) and a
trust list of server certificates (``plantstream edge certs create|trust|list``).

Layout of a PKI directory (default ``$PLANTSTREAM_STATE_DIR/edge/pki``)::

    own/cert.der  own/key.pem (0600)   the agent's application instance certificate
    trusted/*.der                      server certificates (or CAs) the agent accepts
    rejected/*.der                     server certificates seen but not trusted (to review, then trust)

Trust contract (:class:`ServerTrust`): a server certificate is accepted when it is inside its
validity period AND either its SHA-256 thumbprint equals one in ``trusted/`` (pinning a
self-signed server) or a CA in ``trusted/`` issued it. Anything else is refused with
BadCertificateUntrusted, written to ``rejected/`` and logged with its thumbprint.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.cert_gen import dump_private_key_as_pem, generate_private_key, generate_self_signed_app_certificate
from asyncua.crypto.truststore import TrustStore
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

OWN_CERT = Path("own/cert.der")
OWN_KEY = Path("own/key.pem")


def default_pki_dir(state_dir: Path) -> Path:
    return state_dir / "edge" / "pki"


def thumbprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def load_cert(path: Path) -> x509.Certificate:
    """A certificate from a DER or PEM file; ValueError naming the file if it is neither."""
    data = path.read_bytes()
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ValueError(f"{path}: not a DER or PEM X.509 certificate ({exc})") from None


def application_uri(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def create_client_certificate(
    pki_dir: Path,
    uri: str | None = None,
    common_name: str = "plantstream edge",
    days: int = 3650,
    hostnames: list[str] | None = None,
    force: bool = False,
) -> tuple[Path, Path]:
    """Write own/cert.der and own/key.pem (RSA 2048, SHA-256, URI + DNS SANs, client and server auth).

    Raises FileExistsError unless ``force`` when a certificate is already there (replacing it means
    every server that trusts the old one must trust the new one).
    """
    host = socket.gethostname()
    uri = uri or f"urn:{host}:plantstream:edge"
    cert_path, key_path = pki_dir / OWN_CERT, pki_dir / OWN_KEY
    if cert_path.exists() and not force:
        raise FileExistsError(f"{cert_path} exists; pass --force to replace it")
    key = generate_private_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    names += [x509.DNSName(h) for h in (hostnames or [host])]
    cert = generate_self_signed_app_certificate(
        key,
        common_name,
        {"organizationName": "plantstream"},
        names,
        [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
        days=days,
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    (pki_dir / "trusted").mkdir(exist_ok=True)
    # The key is written 0600 from the start, never world-readable for a moment.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(dump_private_key_as_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return cert_path, key_path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:40] or "cert"


def common_name(cert: x509.Certificate) -> str:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cn[0].value) if cn else cert.subject.rfc4514_string()


def trust(pki_dir: Path, cert_file: Path) -> Path:
    """Copy a server (or CA) certificate into trusted/ as DER; returns the stored path."""
    cert = load_cert(cert_file)
    out = pki_dir / "trusted" / f"{_safe(common_name(cert))}-{thumbprint(cert)[:16]}.der"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    rejected = pki_dir / "rejected" / out.name
    rejected.unlink(missing_ok=True)
    return out


@dataclass(frozen=True, slots=True)
class CertInfo:
    kind: str  # own | trusted | rejected
    path: Path
    subject: str
    uri: str | None
    not_after: datetime
    thumbprint: str

    @property
    def expired(self) -> bool:
        return self.not_after < datetime.now(UTC)


def list_certs(pki_dir: Path) -> list[CertInfo]:
    out: list[CertInfo] = []
    for kind, paths in (
        ("own", [pki_dir / OWN_CERT]),
        ("trusted", sorted((pki_dir / "trusted").glob("*"))),
        ("rejected", sorted((pki_dir / "rejected").glob("*"))),
    ):
        for p in paths:
            if not p.is_file():
                continue
            try:
                c = load_cert(p)
            except ValueError:
                log.warning("not a certificate; ignored", extra={"kv": {"path": str(p)}})
                continue
            out.append(
                CertInfo(kind, p, c.subject.rfc4514_string(), application_uri(c), c.not_valid_after_utc, thumbprint(c))
            )
    return out


class ServerTrust:
    """asyncua ``certificate_validator``: accept only servers the trust list names (see module doc)."""

    def __init__(self, pki_dir: Path) -> None:
        self.pki_dir = pki_dir
        self.pinned: set[str] = set()
        self.store: TrustStore | None = None

    async def load(self) -> None:
        trusted = self.pki_dir / "trusted"
        self.pinned = set()
        for p in sorted(trusted.glob("*")) if trusted.is_dir() else []:
            try:
                self.pinned.add(thumbprint(load_cert(p)))
            except ValueError:
                log.warning("not a certificate in the trust list; ignored", extra={"kv": {"path": str(p)}})
        self.store = None
        if self.pinned:  # asyncua's store refuses to be empty
            self.store = TrustStore([trusted], [])
            await self.store.load()

    def _issued_by_trusted_ca(self, cert: x509.Certificate) -> bool:
        if self.store is None:
            return False
        try:
            return bool(self.store.is_trusted(cert))
        except Exception:  # cryptography's verifier raises a few types for odd certificates
            return False

    async def __call__(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ServiceError(StatusCodes.BadCertificateTimeInvalid)
        tp = thumbprint(cert)
        if tp in self.pinned or self._issued_by_trusted_ca(cert):
            return
        name = f"{_safe(common_name(cert))}-{tp[:16]}.der"
        trusted = self.pki_dir / "trusted" / name
        if trusted.exists():  # trusted since the list was loaded (`edge certs trust` while we retry)
            self.pinned.add(tp)
            return
        rejected = self.pki_dir / "rejected" / name
        try:
            rejected.parent.mkdir(parents=True, exist_ok=True)
            rejected.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        except OSError:
            pass
        if trusted.exists():  # `trust` ran between our check and the write: undo the stale copy
            rejected.unlink(missing_ok=True)
            self.pinned.add(tp)
            return
        log.error(
            "opcua: server certificate is not trusted; connection refused",
            extra={
                "kv": {
                    "server": str(app.ApplicationUri),
                    "subject": cert.subject.rfc4514_string(),
                    "sha256": tp,
                    "to_trust": f"plantstream edge certs trust {rejected}",
                }
            },
        )
        raise ServiceError(StatusCodes.BadCertificateUntrusted)
