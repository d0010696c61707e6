#!/usr/bin/env python3
"""Offline checks of manifests rendered from helm/corral (run by helm/test.sh).

    check_manifests.py --kube-version 1.33.0 --repo ROOT NAME=RENDERED.yaml ...

For every rendered object:
  * built-in kinds are validated, strictly (unknown fields refused), against the Kubernetes
    OpenAPI schemas that the kubernetes-validate package ships, for the named version;
  * ScaledObject, ServiceMonitor and PrometheusRule against the schemas in crd-schemas/;
  * an object of any other kind is an error (nothing goes unchecked).
Then Corral's own rules: the topic manifest equals deploy/topics.yaml, every metric an alert or
the dashboard uses is one the services register, KEDA never scales past the partition count,
stream pods take their instance id from the pod ordinal and have their probes on the admin port.
Exit status 1 with every failure listed.
"""
import argparse
import json
import pathlib
import re
import sys

import jsonschema
import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_ScaledObject.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_ServiceMonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_PrometheusRule.json",
}
STREAM = ("validator", "identity", "compute", "fanout")
failures = []


def fail(where, msg):
    failures.append(f"{where}: {msg}")


def registered_metrics(repo):
    """Names (without the corral_ prefix) registered anywhere in the services' sources."""
    names = set()
    for path in (repo / "services").rglob("*.rs"):
        names.update(re.findall(r'"([a-z][a-z0-9_]+)"', path.read_text(errors="replace")))
    names.add("build_info")
    return names


def metric_names(text):
    out = set()
    for m in re.findall(r"\bcorral_[a-z0-9_]+", text):
        for suffix in ("_bucket", "_sum", "_count"):
            if m.endswith(suffix):
                m = m[: -len(suffix)]
                break
        out.add(m)
    return out


def check_metrics(where, text, known):
    used = metric_names(text)
    if not used:
        fail(where, "uses no corral_ metric")
    for m in sorted(used):
        if m[len("corral_"):] not in known:
            fail(where, f"metric {m} is not registered by any service")


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def check_objects(name, docs, kube, repo, known):
    crd_schemas = {k: json.loads((HERE / "crd-schemas" / f).read_text()) for k, f in CRDS.items()}
    values_partitions = None
    for doc in docs:
        kind, api = doc.get("kind"), doc.get("apiVersion")
        where = f"{name}: {kind}/{doc.get('metadata', {}).get('name')}"
        if (api, kind) in crd_schemas:
            errors = sorted(jsonschema.Draft7Validator(crd_schemas[(api, kind)]).iter_errors(doc), key=str)
            for e in errors:
                fail(where, f"{'/'.join(map(str, e.absolute_path))}: {e.message}")
        else:
            try:
                kubernetes_validate.validate(doc, kube, strict=True)
            except kubernetes_validate.utils.SchemaNotFoundError:
                fail(where, f"no schema for {api} {kind} in Kubernetes {kube} (and none vendored)")
            except kubernetes_validate.utils.ValidationError as e:
                fail(where, f"{'/'.join(map(str, e.path))}: {e.message}")
            except Exception as e:  # noqa: BLE001 - any other failure is a failure too
                fail(where, f"validation failed: {e!r}")

        if kind == "ConfigMap" and doc["metadata"]["name"].endswith("-setup-topics"):
            values_partitions = check_topics(where, doc, repo)
        if kind == "PrometheusRule":
            for g in doc["spec"]["groups"]:
                for r in g["rules"]:
                    check_metrics(f"{where} {r.get('alert') or r.get('record')}", str(r["expr"]), known)
                    if str(r["expr"]).count("(") != str(r["expr"]).count(")"):
                        fail(where, f"{r.get('alert')}: unbalanced parentheses")
        if kind == "StatefulSet":
            check_stream(where, doc)
        if kind == "Deployment":
            c = doc["spec"]["template"]["spec"]["containers"][0]
            check_probes(where, c)
    check_wiring(name, docs)
    for doc in docs:
        if doc.get("kind") == "ScaledObject":
            where = f"{name}: ScaledObject/{doc['metadata']['name']}"
            if values_partitions is None:
                fail(where, "no topic manifest rendered to compare maxReplicaCount with")
            elif doc["spec"]["maxReplicaCount"] > values_partitions:
                fail(where, f"maxReplicaCount {doc['spec']['maxReplicaCount']} > {values_partitions} partitions")
            if doc["spec"]["scaleTargetRef"].get("kind") != "StatefulSet":
                fail(where, "scales something other than a StatefulSet")
            for t in doc["spec"]["triggers"]:
                for key in ("bootstrapServers", "consumerGroup", "topic", "lagThreshold"):
                    if not t["metadata"].get(key):
                        fail(where, f"kafka trigger without {key}")


def matches(selector_labels, labels):
    return all(labels.get(k) == v for k, v in selector_labels.items())


def check_wiring(name, docs):
    """Services reach pods and their named ports; monitors, autoscalers and budgets reach
    objects that exist."""
    pods = []  # (workload kind/name, pod labels, container port names)
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            t = d["spec"]["template"]
            ports = {p["name"] for c in t["spec"]["containers"] for p in c.get("ports", [])}
            pods.append((f"{d['kind']}/{d['metadata']['name']}", t["metadata"].get("labels", {}), ports))
            if not matches(d["spec"]["selector"]["matchLabels"], t["metadata"].get("labels", {})):
                fail(f"{name}: {d['kind']}/{d['metadata']['name']}", "selector does not match its pod template")
            if d["kind"] == "StatefulSet":
                svc = d["spec"]["serviceName"]
                if not any(x["kind"] == "Service" and x["metadata"]["name"] == svc and x["spec"].get("clusterIP") == "None" for x in docs):
                    fail(f"{name}: StatefulSet/{d['metadata']['name']}", f"no headless Service {svc}")
    services = [d for d in docs if d["kind"] == "Service"]
    for svc in services:
        where = f"{name}: Service/{svc['metadata']['name']}"
        targets = [p for p in pods if matches(svc["spec"]["selector"], p[1])]
        if not targets:
            fail(where, "selects no pod")
        for port in svc["spec"]["ports"]:
            tp = port.get("targetPort")
            if isinstance(tp, str) and not all(tp in p[2] for p in targets):
                fail(where, f"targetPort {tp} is not a port of every selected pod")
    for d in docs:
        where = f"{name}: {d['kind']}/{d['metadata']['name']}"
        if d["kind"] == "ServiceMonitor":
            sel = d["spec"]["selector"]
            chosen = [s for s in services if matches(sel.get("matchLabels", {}), s["metadata"].get("labels", {}))
                      and all(s["metadata"].get("labels", {}).get(e["key"]) in e.get("values", [])
                              for e in sel.get("matchExpressions", []) if e["operator"] == "In")]
            for ep in d["spec"]["endpoints"]:
                if not any(ep["port"] in {p["name"] for p in s["spec"]["ports"]} for s in chosen):
                    fail(where, f"endpoint port {ep['port']} is on no selected Service")
        if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
            ref = d["spec"]["scaleTargetRef"]
            if not any(x["kind"] == ref.get("kind", "Deployment") and x["metadata"]["name"] == ref["name"] for x in docs):
                fail(where, f"scales {ref.get('kind')}/{ref['name']}, which is not rendered")
        if d["kind"] == "PodDisruptionBudget":
            if not any(matches(d["spec"]["selector"]["matchLabels"], p[1]) for p in pods):
                fail(where, "selects no pod")


def check_probes(where, c):
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        got = c.get(probe, {}).get("httpGet", {})
        if got.get("path") != path or got.get("port") != "admin" or "admin" not in ports:
            fail(where, f"{probe} is not {path} on the admin port: {got}")


def check_stream(where, doc):
    spec = doc["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = env_of(c)
    inst = env.get("CORRAL_INSTANCE_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    if inst != "metadata.labels['apps.kubernetes.io/pod-index']":
        fail(where, f"CORRAL_INSTANCE_ID does not come from the pod ordinal: {inst}")
    if env.get("CORRAL_STATE_DIR", {}).get("value") not in [m["mountPath"] for m in c.get("volumeMounts", [])]:
        fail(where, "CORRAL_STATE_DIR is not a mounted volume")
    if spec.get("terminationGracePeriodSeconds", 30) < 30:
        fail(where, "terminationGracePeriodSeconds below 30 s")
    vols = {v["name"] for v in spec.get("volumes", [])} | {
        t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
    if "state" not in vols:
        fail(where, "no state volume (PVC or emptyDir)")
    check_probes(where, c)


def check_topics(where, doc, repo):
    rendered = yaml.safe_load(doc["data"]["topics.yaml"])
    source = yaml.safe_load((repo / "deploy" / "topics.yaml").read_text())

    def table(m):
        d = m.get("defaults", {})
        return {t["name"]: (t["cleanup_policy"], t.get("retention"), t.get("partitions", d.get("partitions")),
                            {k: str(v) for k, v in (t.get("configs") or {}).items()})
                for t in m["topics"]}

    got, want = table(rendered), table(source)
    if set(got) != set(want):
        fail(where, f"topics differ from deploy/topics.yaml: {sorted(set(got) ^ set(want))}")
    default_partitions = rendered["defaults"]["partitions"]
    for t, (policy, retention, parts, configs) in want.items():
        if t not in got:
            continue
        g = got[t]
        if (g[0], g[1]) != (policy, retention):
            fail(where, f"{t}: {g[:2]} but deploy/topics.yaml has {(policy, retention)}")
        if g[3] != configs:
            fail(where, f"{t}: configs {g[3]} but deploy/topics.yaml has {configs}")
        # a topic with its own count keeps it; the others follow topics.partitions
        own = next((x.get("partitions") for x in source["topics"] if x["name"] == t), None)
        if own is not None and g[2] != own:
            fail(where, f"{t}: {g[2]} partitions, deploy/topics.yaml has {own}")
    return default_partitions


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kube-version", required=True)
    ap.add_argument("--repo", required=True, type=pathlib.Path)
    ap.add_argument("--dashboard", type=pathlib.Path)
    ap.add_argument("rendered", nargs="+")
    args = ap.parse_args()
    known = registered_metrics(args.repo)
    for spec in args.rendered:
        name, path = spec.split("=", 1)
        docs = [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]
        kinds = sorted({d["kind"] for d in docs})
        check_objects(name, docs, args.kube_version, args.repo, known)
        print(f"check_manifests: {name}: {len(docs)} objects ({', '.join(kinds)})")
    if args.dashboard:
        dash = json.loads(args.dashboard.read_text())
        exprs = [t["expr"] for p in dash.get("panels", []) for t in p.get("targets", [])]
        if not exprs:
            fail(str(args.dashboard), "no panel has a query")
        for i, e in enumerate(exprs):
            check_metrics(f"{args.dashboard.name} query {i}", e, known)
        print(f"check_manifests: dashboard: {len(exprs)} queries")
    if failures:
        print(f"check_manifests: {len(failures)} failure(s):", file=sys.stderr)
        for f in failures:
            print("  " + f, file=sys.stderr)
        sys.exit(1)
    print(f"check_manifests: every object valid for Kubernetes {args.kube_version}")


if __name__ == "__main__":
    main()
