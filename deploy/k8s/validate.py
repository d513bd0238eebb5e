"""Schema-check the Kubernetes manifests in deploy/k8s without a cluster.

Built-in kinds (Deployment, Service, ConfigMap, RBAC) go through `kubernetes-validate`
(the Kubernetes OpenAPI schemas, strict: unknown fields are errors); custom resources
(InferencePool, Gateway, HTTPRoute) through `jsonschema` against the openAPIV3Schema of the
CRD files given with --crd, also with unknown fields rejected.  The EndpointPickerConfig
inside the EPP's ConfigMap has no published schema and is not checked.

    pip install kubernetes-validate jsonschema pyyaml
    python deploy/k8s/validate.py --crd inferencepools.yaml gateways.yaml httproutes.yaml -- deploy/k8s/*.yaml

(CRDs: gateway-api-inference-extension's config/crd/bases/inference.networking.k8s.io_inferencepools.yaml,
gateway-api's config/crd/standard/gateway.networking.k8s.io_{gateways,httproutes}.yaml.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml


def _closed(schema: dict) -> dict:
    """The schema with unknown properties rejected wherever it lists the known ones
    (the API server would silently prune them: a typo would go unnoticed)."""
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) if isinstance(v, dict) else [_closed(i) for i in v] if isinstance(v, list) else v
           for k, v in schema.items()}
    if "properties" in out:
        out["properties"] = {k: _closed(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def crd_schemas(paths: list[Path]) -> dict[tuple[str, str], dict]:
    """{(apiVersion, kind): closed JSON schema} from CRD files."""
    schemas = {}
    for path in paths:
        for crd in yaml.safe_load_all(path.read_text()):
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = _closed(version["schema"]["openAPIV3Schema"])
                schema["properties"]["metadata"] = {"type": "object"}
                schemas[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = schema
    return schemas


def check(doc: dict, schemas: dict, k8s_version: str) -> str | None:
    """None if `doc` is valid, else the first problem."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    try:
        if key in schemas:
            jsonschema.validate(doc, schemas[key])
        else:
            kubernetes_validate.validate(doc, k8s_version, strict=True)
    except jsonschema.ValidationError as exc:
        return f"{exc.message} at {'/'.join(map(str, exc.absolute_path))}"
    except kubernetes_validate.ValidationError as exc:
        return f"{exc.message} at {'/'.join(map(str, exc.path))}"
    except kubernetes_validate.SchemaNotFoundError:
        return f"no schema for {key[1]} {key[0]} (give its CRD with --crd)"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crd", nargs="*", type=Path, default=[], help="CRD files for the custom resources")
    ap.add_argument("--kubernetes-version", default=kubernetes_validate.latest_version())
    ap.add_argument("manifests", nargs="+", type=Path)
    args = ap.parse_args(argv)
    schemas = crd_schemas(args.crd)
    failed = 0
    for path in args.manifests:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            problem = check(doc, schemas, args.kubernetes_version)
            name = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            how = "CRD schema" if (doc.get("apiVersion"), doc.get("kind")) in schemas else \
                f"Kubernetes {args.kubernetes_version}"
            print(f"{'FAIL' if problem else 'ok  '} {name} ({how}){': ' + problem if problem else ''}")
            failed += problem is not None
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
