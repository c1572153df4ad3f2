"""The webhook's certificate at run time: kept in one Secret, served by every replica.

Self-managed (the default): whichever replica finds the Secret missing, or its certificate
expiring within 30 days (`certs.renewal_reason`), makes a new one (`certs.next_bundle`) and
writes it with optimistic concurrency: create, or replace carrying the `resourceVersion` it
read. A 409 means another replica won the race: it reads the Secret again and serves that.
The leader also patches the ValidatingWebhookConfiguration's `caBundle` (every webhook in
it) whenever the Secret's CA differs from it. With cert-manager (`self_managed=False`) the
operator only reads the Secret; cert-manager's CA injector fills the caBundle.

Every replica re-reads the Secret every `interval_s` (a minute) and, when it changed, loads
the new pair into the same `ssl.SSLContext`: new TLS handshakes use it, connections already
open finish on the old one. The pair is written to a private temporary directory for
`load_cert_chain` (which reads files only); the chart mounts an emptyDir at /tmp.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tramontane_kube import SECRET, ApiError, Conflict, KubeClient, ResourceRef, Unreachable

from .certs import TlsBundle, bundle_from_secret, next_bundle, renewal_reason

log = logging.getLogger(__name__)

VALIDATING_WEBHOOK_CONFIGURATION = ResourceRef(
    "admissionregistration.k8s.io",
    "v1",
    "validatingwebhookconfigurations",
    "ValidatingWebhookConfiguration",
    namespaced=False,
)
_RACE_ATTEMPTS = 5


class CertificateError(Exception):
    """No usable certificate: the Secret is missing or bad (cert-manager mode), or unwritable."""


class CertificateKeeper:
    """The Secret `namespace/secret_name` holding the webhook's pair, and the served context."""

    def __init__(
        self,
        hub: KubeClient,
        namespace: str,
        secret_name: str,
        hostnames: list[str],
        *,
        self_managed: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.hub, self.namespace, self.secret_name = hub, namespace, secret_name
        self.hostnames, self.self_managed, self._clock = hostnames, self_managed, clock
        self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.bundle: TlsBundle | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="tramontane-webhook-"))
        self.loaded = asyncio.Event()
        self._changed = asyncio.Event()  # a new pair was loaded: the caBundle may be stale

    async def ensure(self) -> TlsBundle:
        """The Secret's bundle, made or renewed first when self-managed and needed."""
        for _ in range(_RACE_ATTEMPTS):
            secret = await self.hub.get(SECRET, self.namespace, self.secret_name)
            bundle = bundle_from_secret(secret)
            reason = renewal_reason(bundle, self.hostnames, self._clock())
            if reason is None and bundle is not None:
                return bundle
            if not self.self_managed:
                raise CertificateError(
                    f"Secret {self.namespace}/{self.secret_name}: {reason} (cert-manager writes "
                    "it: check its Certificate)"
                )
            log.info("webhook: new certificate in %s: %s", self.secret_name, reason)
            new = next_bundle(bundle, self.hostnames, self._clock())
            try:
                await self._write(secret, new)
            except Conflict:
                continue  # another replica wrote it first: read theirs
            return new
        raise CertificateError(
            f"Secret {self.namespace}/{self.secret_name}: changed by others {_RACE_ATTEMPTS} times "
            "in a row while renewing it"
        )

    async def _write(self, secret: dict[str, object] | None, bundle: TlsBundle) -> None:
        body: dict[str, object] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {
                "name": self.secret_name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "tramontane"},
            },
            "data": bundle.secret_data(),
        }
        if secret is None:
            await self.hub.create(SECRET, body)
            return
        meta = secret.get("metadata")
        version = meta.get("resourceVersion") if isinstance(meta, dict) else None
        body["metadata"] = {
            "name": self.secret_name,
            "namespace": self.namespace,
            "labels": {"app.kubernetes.io/managed-by": "tramontane"},
            "resourceVersion": version,  # a 409 if another replica wrote it since we read
        }
        await self.hub.replace(SECRET, body)

    def load(self, bundle: TlsBundle) -> bool:
        """Serve `bundle` from now on; False when it is the one already served."""
        if bundle == self.bundle:
            return False
        cert, key = self._dir / "tls.crt", self._dir / "tls.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(bundle.tls_key)
        cert.write_bytes(bundle.tls_crt)
        self.ssl_context.load_cert_chain(cert, key)
        self.bundle = bundle
        self.loaded.set()
        self._changed.set()
        return True

    async def refresh(self) -> None:
        """Ensure the Secret and serve what it holds."""
        if self.load(await self.ensure()):
            log.info("webhook: serving the certificate of Secret %s", self.secret_name)

    async def run(self, interval_s: float = 60.0) -> None:
        """Refresh now, then every `interval_s`; errors are logged and retried next time."""
        while True:
            try:
                await self.refresh()
            except (ApiError, Unreachable, CertificateError, ValueError, ssl.SSLError) as exc:
                log.warning("webhook: certificate: %s", exc)
            await asyncio.sleep(interval_s if self.loaded.is_set() else min(interval_s, 2.0))

    async def publish_ca_bundle(self, configuration: str) -> bool:
        """Patch every webhook of `configuration` to trust the served CA; True if it changed."""
        if self.bundle is None:
            return False
        vwc = await self.hub.get(VALIDATING_WEBHOOK_CONFIGURATION, None, configuration)
        if vwc is None:
            raise CertificateError(f"ValidatingWebhookConfiguration {configuration} not found")
        ca = base64.b64encode(self.bundle.ca_crt).decode()
        webhooks = vwc.get("webhooks") or []
        ops: list[dict[str, object]] = [
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": ca}
            for i, hook in enumerate(webhooks)
            if (hook.get("clientConfig") or {}).get("caBundle") != ca
        ]
        if not ops:
            return False
        # Indexes are positions in the list we read: patch only that version of it.
        version = (vwc.get("metadata") or {}).get("resourceVersion")
        ops.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": version})
        await self.hub.patch(VALIDATING_WEBHOOK_CONFIGURATION, None, configuration, ops)
        log.info("webhook: caBundle of %s updated", configuration)
        return True

    async def publish_loop(self, configuration: str, interval_s: float = 60.0) -> None:
        """The leader's part: keep the caBundle in step with the Secret, at once when this
        replica loads a new pair, and every `interval_s` (someone may have edited it)."""
        await self.loaded.wait()
        while True:
            self._changed.clear()
            try:
                await self.publish_ca_bundle(configuration)
                wait = interval_s
            except (ApiError, Unreachable, CertificateError) as exc:
                log.warning("webhook: caBundle: %s", exc)
                wait = min(interval_s, 2.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)
