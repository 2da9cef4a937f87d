"""Kubernetes manifests for a Docker bundle: a Deployment, a Service and a Secret for the key.

They say what ``compose.yaml`` says, in Kubernetes' words: the same image, the same
container port, the API key from the same file (``/run/secrets/api-key``: compose's
secret, here the Secret mounted as a volume), the same server settings,
the same memory (compose's ``mem_limit`` ``1280m`` is 1280 MiB, written ``1280Mi`` here:
in Kubernetes ``m`` means thousandths), and the same health check (``/health``: the
readiness and liveness probes, with compose's interval, timeout, retries and start
period). The container runs as ``nobody`` with a read-only root filesystem, no
privilege escalation and no capabilities; ``/tmp`` is a small in-memory volume.

The Secret ships with an empty key on purpose: the server refuses to start without a
key, so a forgotten edit fails loudly instead of serving with a key everyone knows.

The manifests are checked against Kubernetes' own schemas in the tests
(``kubernetes-validate``).
"""

from __future__ import annotations

from typing import Any

import yaml

#: Where the bundle's server (serve.sh, ``llama-server --api-key-file``) reads its key.
KEY_FILE = "/run/secrets/api-key"
KEY_FIELD = "api-key"
#: Health check timings, shared with compose.yaml (seconds).
HEALTH = {"interval": 30, "timeout": 5, "retries": 3, "start_period": 60}
HEALTH_PATH = "/health"


def mebibytes(compose_mem: str) -> int:
    """compose's ``mem_limit`` (``"1280m"``: Docker's m is MiB) in MiB."""
    value = compose_mem.strip().lower()
    if not value.endswith("m") or not value[:-1].isdigit():
        raise ValueError(f"unexpected mem_limit {compose_mem!r} (expected like '1280m')")
    return int(value[:-1])


def manifests(meta: dict[str, Any], *, port: int) -> dict[str, dict[str, Any]]:
    """{file name: manifest} for a bundle described by ``bundle.json``'s ``meta``."""
    slug = str(meta["slug"])
    labels = {"app.kubernetes.io/name": slug, "app.kubernetes.io/part-of": "demoai"}
    secret = f"{slug}-api-key"
    limit_mi = mebibytes(str(meta["mem_limit"]))
    request_mi = min(limit_mi, int(float(meta["memory_hint_mb"])) + 1)
    probe = {"httpGet": {"path": HEALTH_PATH, "port": "http"}}
    key_dir, key_name = KEY_FILE.rsplit("/", 1)
    container = {
        "name": "model",
        "image": str(meta["image"]),
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": [
            {"name": "DEMOAI_PARALLEL", "value": str(meta["parallel"])},
            {"name": "DEMOAI_CTX_PER_SLOT", "value": str(meta["ctx_per_slot"])},
            {"name": "DEMOAI_THREADS", "value": "0"},
            {"name": "DEMOAI_API_KEY_FILE", "value": KEY_FILE},
        ],
        "resources": {
            "requests": {"cpu": "1", "memory": f"{request_mi}Mi"},
            "limits": {"memory": f"{limit_mi}Mi"},
        },
        "readinessProbe": {
            **probe,
            "periodSeconds": 10,
            "timeoutSeconds": HEALTH["timeout"],
            "failureThreshold": HEALTH["retries"],
        },
        "livenessProbe": {
            **probe,
            "initialDelaySeconds": HEALTH["start_period"],
            "periodSeconds": HEALTH["interval"],
            "timeoutSeconds": HEALTH["timeout"],
            "failureThreshold": HEALTH["retries"],
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65534,
            "runAsGroup": 65534,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "api-key", "mountPath": key_dir, "readOnly": True},
        ],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": slug, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "seccompProfile": {"type": "RuntimeDefault"},
                        "fsGroup": 65534,  # the key file is readable by the server's group
                    },
                    "containers": [container],
                    "volumes": [
                        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                        {
                            "name": "api-key",
                            "secret": {
                                "secretName": secret,
                                "items": [{"key": KEY_FIELD, "path": key_name}],
                                "defaultMode": 0o440,
                            },
                        },
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": slug, "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "selector": labels,
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    secret_doc = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret, "labels": labels},
        "type": "Opaque",
        "stringData": {KEY_FIELD: ""},
    }
    return {"deployment.yaml": deployment, "service.yaml": service, "secret.yaml": secret_doc}


SECRET_NOTE = (
    "# The API key clients must send (Authorization: Bearer KEY). It is empty on purpose:\n"
    "# the server refuses to start without a key. Set it before applying, or create the\n"
    "# Secret yourself instead of applying this file:\n"
    "#   kubectl create secret generic {name} --from-literal={field}=$(openssl rand -hex 24)\n"
)


class _PlainDumper(yaml.SafeDumper):  # type: ignore[misc]  # (PyYAML has no types)
    """Writes a repeated value out again instead of as a YAML anchor (``&id001``)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(meta: dict[str, Any], *, port: int) -> dict[str, str]:
    """{file name: YAML text} of :func:`manifests`."""
    out = {}
    for name, doc in manifests(meta, port=port).items():
        text = yaml.dump(doc, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False)
        if doc["kind"] == "Secret":
            text = SECRET_NOTE.format(name=doc["metadata"]["name"], field=KEY_FIELD) + text
        out[name] = text
    return out
