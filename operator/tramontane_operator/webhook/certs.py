"""The webhook's certificates, self-managed: a CA and a serving certificate, and when to renew.

Pure (no I/O; `now` is given). The CA (ECDSA P-256, 10 years) signs the serving certificate
(1 year) for the Service's DNS names (`<service>.<namespace>.svc` and its variants). Both
live in one Secret of type `kubernetes.io/tls`: `tls.crt`/`tls.key` (what every replica
serves), `ca.crt` (the caBundle the API server trusts) and `ca.key` (so a replica renews the
serving certificate under the same CA, and the caBundle need not change). When the CA itself
is renewed, `ca.crt` holds the new CA followed by the old one while that one is still valid,
so replicas still serving the old certificate stay trusted until they reload.

`renewal_reason` says why a bundle must be (re)made: missing, unreadable, expiring within 30
days, not naming the Service, or not signed by its CA. cert-manager writes the same keys
(without `ca.key`): the operator then only reads them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = timedelta(days=3650)
SERVING_VALIDITY = timedelta(days=365)
RENEW_BEFORE = timedelta(days=30)
SECRET_KEYS = ("tls.crt", "tls.key", "ca.crt")


@dataclass(frozen=True)
class TlsBundle:
    """PEM bytes: the serving pair, the CA bundle (first the signing CA), the CA's key."""

    tls_crt: bytes
    tls_key: bytes
    ca_crt: bytes
    ca_key: bytes | None = None

    def secret_data(self) -> dict[str, str]:
        """The Secret's `data` (base64)."""
        data = {"tls.crt": self.tls_crt, "tls.key": self.tls_key, "ca.crt": self.ca_crt}
        if self.ca_key is not None:
            data["ca.key"] = self.ca_key
        return {k: base64.b64encode(v).decode() for k, v in data.items()}


def service_hostnames(service: str, namespace: str) -> list[str]:
    """The names the API server may use for the Service (it uses `<svc>.<ns>.svc`)."""
    return [
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        f"{service}.{namespace}",
        service,
    ]


def bundle_from_secret(secret: Mapping[str, object] | None) -> TlsBundle | None:
    """The bundle in a Secret as read from the API; None when a key is missing or garbled."""
    data = (secret or {}).get("data")
    if not isinstance(data, Mapping):
        return None
    try:
        decoded = {k: base64.b64decode(str(v), validate=True) for k, v in data.items()}
    except (binascii.Error, ValueError):
        return None
    if any(not decoded.get(key) for key in SECRET_KEYS):
        return None
    return TlsBundle(
        decoded["tls.crt"], decoded["tls.key"], decoded["ca.crt"], decoded.get("ca.key")
    )


def renewal_reason(bundle: TlsBundle | None, hostnames: Sequence[str], now: datetime) -> str | None:
    """Why `bundle` must be made anew; None while it is good for more than 30 days."""
    if bundle is None:
        return "no certificate yet"
    try:
        serving = x509.load_pem_x509_certificate(bundle.tls_crt)
        ca = x509.load_pem_x509_certificates(bundle.ca_crt)[0]
        serialization.load_pem_private_key(bundle.tls_key, password=None)
    except ValueError as exc:
        return f"unreadable certificate or key: {exc}"
    for what, cert in (("serving certificate", serving), ("CA", ca)):
        if cert.not_valid_after_utc - now < RENEW_BEFORE:
            return f"the {what} expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    try:
        names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return "the serving certificate names no host"
    missing = [h for h in hostnames if h not in names.value.get_values_for_type(x509.DNSName)]
    if missing:
        return f"the serving certificate does not name {', '.join(missing)}"
    try:
        serving.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "the serving certificate is not signed by the CA"
    return None


def next_bundle(current: TlsBundle | None, hostnames: Sequence[str], now: datetime) -> TlsBundle:
    """A new serving certificate, under the current CA while it has more than 30 days left
    and its key is known; else under a new CA (the old one kept in `ca.crt` while valid)."""
    ca_cert, ca_key, older = _usable_ca(current, now)
    if ca_cert is None or ca_key is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_certificate(ca_key, now)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _serving_certificate(key, ca_cert, ca_key, hostnames, now)
    bundle = ca_cert.public_bytes(serialization.Encoding.PEM) + b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in older if c != ca_cert
    )
    return TlsBundle(
        tls_crt=cert.public_bytes(serialization.Encoding.PEM),
        tls_key=_pem_key(key),
        ca_crt=bundle,
        ca_key=_pem_key(ca_key),
    )


def _usable_ca(
    current: TlsBundle | None, now: datetime
) -> tuple[x509.Certificate | None, ec.EllipticCurvePrivateKey | None, list[x509.Certificate]]:
    """(CA to sign with or None, its key, the CAs of the current bundle still valid)."""
    if current is None:
        return None, None, []
    try:
        cas = x509.load_pem_x509_certificates(current.ca_crt)
    except ValueError:
        return None, None, []
    valid = [c for c in cas if c.not_valid_after_utc > now]
    if current.ca_key is None or not cas or cas[0] not in valid:
        return None, None, valid
    try:
        key = serialization.load_pem_private_key(current.ca_key, password=None)
    except ValueError:
        return None, None, valid
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None, None, valid
    if cas[0].not_valid_after_utc - now < RENEW_BEFORE:
        return None, None, valid
    return cas[0], key, valid


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tramontane-webhook-ca")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _serving_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    hostnames: Sequence[str],
    now: datetime,
) -> x509.Certificate:
    not_after = min(now + SERVING_VALIDITY, ca_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hostnames]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
