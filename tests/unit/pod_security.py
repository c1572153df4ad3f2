"""A checker for the Kubernetes Pod Security Standards, Baseline and Restricted, on a pod spec.

No maintained offline implementation is installed (`kubernetes-validate` checks schemas only;
the reference is the Go `k8s.io/pod-security-admission`), so this is a table of its controls
at their newest version (https://kubernetes.io/docs/concepts/security/pod-security-standards/):
one function per control, each returning what it forbids. `violations(pod_spec, annotations)`
runs every control of a level (Restricted includes Baseline). Containers means containers,
init containers and ephemeral containers. Not modelled: the exemptions Restricted grants to
pods with `spec.os.name: windows` (every pod we render is a Linux pod).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, Literal

Level = Literal["baseline", "restricted"]
Spec = Mapping[str, Any]
Control = Callable[[Spec, Mapping[str, str]], list[str]]

BASELINE_CAPABILITIES: Final = frozenset(
    {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
     "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
)  # fmt: skip
RESTRICTED_ADD: Final = frozenset({"NET_BIND_SERVICE"})
SELINUX_TYPES: Final = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
SAFE_SYSCTLS: Final = frozenset(
    {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_local_reserved_ports",
     "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
     "net.ipv4.ping_group_range", "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
     "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
)  # fmt: skip
RESTRICTED_VOLUMES: Final = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
     "projected", "secret"}
)  # fmt: skip
SECCOMP_RESTRICTED: Final = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_TYPES: Final = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION: Final = "container.apparmor.security.beta.kubernetes.io/"
_CONTAINER_LISTS: Final = ("initContainers", "containers", "ephemeralContainers")


def containers(spec: Spec) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(name, container) of every container, init container and ephemeral container."""
    for key in _CONTAINER_LISTS:
        for c in spec.get(key) or []:
            yield str(c.get("name", "?")), c


def _csc(container: Mapping[str, Any]) -> Mapping[str, Any]:
    return container.get("securityContext") or {}


def _psc(spec: Spec) -> Mapping[str, Any]:
    return spec.get("securityContext") or {}


def _contexts(spec: Spec) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """The pod's security context and each container's, named."""
    yield "pod", _psc(spec)
    for name, c in containers(spec):
        yield f"container {name}", _csc(c)


# Baseline ---------------------------------------------------------------------------------


def host_process(spec: Spec, _: Mapping[str, str]) -> list[str]:
    return [w for w, sc in _contexts(spec) if (sc.get("windowsOptions") or {}).get("hostProcess")]


def host_namespaces(spec: Spec, _: Mapping[str, str]) -> list[str]:
    return [f"spec.{k}" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]


def privileged(spec: Spec, _: Mapping[str, str]) -> list[str]:
    return [n for n, c in containers(spec) if _csc(c).get("privileged")]


def _added(container: Mapping[str, Any]) -> set[str]:
    return set((_csc(container).get("capabilities") or {}).get("add") or [])


def capabilities_baseline(spec: Spec, _: Mapping[str, str]) -> list[str]:
    return [
        f"{n} adds {sorted(_added(c) - BASELINE_CAPABILITIES)}"
        for n, c in containers(spec)
        if _added(c) - BASELINE_CAPABILITIES
    ]


def host_path_volumes(spec: Spec, _: Mapping[str, str]) -> list[str]:
    return [str(v.get("name")) for v in spec.get("volumes") or [] if "hostPath" in v]


def host_ports(spec: Spec, _: Mapping[str, str]) -> list[str]:
    return [
        f"{n} hostPort {p['hostPort']}"
        for n, c in containers(spec)
        for p in c.get("ports") or []
        if p.get("hostPort")
    ]


def app_armor(spec: Spec, annotations: Mapping[str, str]) -> list[str]:
    bad = [
        w
        for w, sc in _contexts(spec)
        if "appArmorProfile" in sc and sc["appArmorProfile"].get("type") not in APPARMOR_TYPES
    ]
    return bad + [
        f"annotation {k}={v}"
        for k, v in annotations.items()
        if k.startswith(APPARMOR_ANNOTATION)
        and v != "runtime/default"
        and not v.startswith("localhost/")
    ]


def se_linux(spec: Spec, _: Mapping[str, str]) -> list[str]:
    out = []
    for who, sc in _contexts(spec):
        opts = sc.get("seLinuxOptions") or {}
        if opts.get("type", "") not in SELINUX_TYPES or opts.get("user") or opts.get("role"):
            out.append(f"{who} seLinuxOptions {dict(opts)}")
    return out


def proc_mount(spec: Spec, _: Mapping[str, str]) -> list[str]:
    return [n for n, c in containers(spec) if _csc(c).get("procMount", "Default") != "Default"]


def seccomp_baseline(spec: Spec, _: Mapping[str, str]) -> list[str]:
    return [
        w
        for w, sc in _contexts(spec)
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined"
    ]


def sysctls(spec: Spec, _: Mapping[str, str]) -> list[str]:
    names = [s.get("name") for s in _psc(spec).get("sysctls") or []]
    return [str(n) for n in names if n not in SAFE_SYSCTLS]


# Restricted -------------------------------------------------------------------------------


def volume_types(spec: Spec, _: Mapping[str, str]) -> list[str]:
    return [
        f"{v.get('name')}: {kind}"
        for v in spec.get("volumes") or []
        for kind in v
        if kind != "name" and kind not in RESTRICTED_VOLUMES
    ]


def privilege_escalation(spec: Spec, _: Mapping[str, str]) -> list[str]:
    return [n for n, c in containers(spec) if _csc(c).get("allowPrivilegeEscalation") is not False]


def run_as_non_root(spec: Spec, _: Mapping[str, str]) -> list[str]:
    """True at the pod (no container says false) or, failing that, true at every container."""
    pod = _psc(spec).get("runAsNonRoot")
    out = ["pod runAsNonRoot=false"] if pod is False else []
    for n, c in containers(spec):
        value = _csc(c).get("runAsNonRoot")
        if value is False or (value is None and pod is not True):
            out.append(f"{n} runAsNonRoot={value}")
    return out


def run_as_user(spec: Spec, _: Mapping[str, str]) -> list[str]:
    return [w for w, sc in _contexts(spec) if sc.get("runAsUser") == 0]


def seccomp_restricted(spec: Spec, _: Mapping[str, str]) -> list[str]:
    """RuntimeDefault or Localhost, set at the pod or at every container."""
    pod = (_psc(spec).get("seccompProfile") or {}).get("type")
    out = [f"pod seccompProfile {pod}"] if pod is not None and pod not in SECCOMP_RESTRICTED else []
    for n, c in containers(spec):
        effective = (_csc(c).get("seccompProfile") or {}).get("type") or pod
        if effective not in SECCOMP_RESTRICTED:
            out.append(f"{n} seccompProfile {effective}")
    return out


def capabilities_restricted(spec: Spec, _: Mapping[str, str]) -> list[str]:
    out = []
    for n, c in containers(spec):
        caps = _csc(c).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{n} does not drop ALL")
        if _added(c) - RESTRICTED_ADD:
            out.append(f"{n} adds {sorted(_added(c) - RESTRICTED_ADD)}")
    return out


CONTROLS: Final[tuple[tuple[str, Level, Control], ...]] = (
    ("hostProcess", "baseline", host_process),
    ("hostNamespaces", "baseline", host_namespaces),
    ("privileged", "baseline", privileged),
    ("capabilities_baseline", "baseline", capabilities_baseline),
    ("hostPathVolumes", "baseline", host_path_volumes),
    ("hostPorts", "baseline", host_ports),
    ("appArmor", "baseline", app_armor),
    ("seLinux", "baseline", se_linux),
    ("procMount", "baseline", proc_mount),
    ("seccomp_baseline", "baseline", seccomp_baseline),
    ("sysctls", "baseline", sysctls),
    ("volumeTypes", "restricted", volume_types),
    ("allowPrivilegeEscalation", "restricted", privilege_escalation),
    ("runAsNonRoot", "restricted", run_as_non_root),
    ("runAsUser", "restricted", run_as_user),
    ("seccomp_restricted", "restricted", seccomp_restricted),
    ("capabilities_restricted", "restricted", capabilities_restricted),
)


def violations(
    pod_spec: Spec, annotations: Mapping[str, str] | None = None, level: Level = "restricted"
) -> dict[str, list[str]]:
    """control id -> what it forbids in `pod_spec`, for every control of `level` that fails."""
    levels = {"baseline"} if level == "baseline" else {"baseline", "restricted"}
    found = {
        control_id: control(pod_spec, annotations or {})
        for control_id, control_level, control in CONTROLS
        if control_level in levels
    }
    return {k: v for k, v in found.items() if v}


def template_violations(template: Mapping[str, Any], level: Level = "restricted") -> dict[str, Any]:
    """`violations` of a PodTemplateSpec (its annotations included)."""
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    return violations(template["spec"], annotations, level)
