#!/usr/bin/env python3
"""Turns one workload of a rendered chart into the `podman run` that starts it as Kubernetes
would (used by helm/chart-to-process.sh):

    pod_to_podman.py RENDERED.yaml KIND NAME --secrets secrets.json --files DIR --container-name N

KIND/NAME is a Deployment, StatefulSet (pod ordinal 0, or --ordinal N) or Job of the render. The pod template's
first container gives the image, command (as the entrypoint), args, env and volume mounts;
env from fieldRef (the pod-index label, metadata.name/namespace), secretKeyRef (from the test's
secrets file) and configMapKeyRef is resolved; emptyDir becomes a tmpfs, configMap and secret
volumes become read-only bind mounts of their files (written below DIR); runAsUser/Group,
readOnlyRootFilesystem, capabilities drop ALL and allowPrivilegeEscalation false are applied.
Prints JSON: {"argv": [...podman run arguments after `run`...], "probes": {"readiness": URL, ...}}.
A field the translation does not know is an error, so nothing rendered is silently dropped.
"""
import argparse
import json
import pathlib
import sys

import yaml

KNOWN_CONTAINER = {"name", "image", "imagePullPolicy", "command", "args", "env", "ports", "livenessProbe",
                   "readinessProbe", "resources", "securityContext", "volumeMounts"}


def die(msg):
    print(f"pod_to_podman: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered")
    ap.add_argument("kind")
    ap.add_argument("name")
    ap.add_argument("--secrets", required=True)
    ap.add_argument("--files", required=True)
    ap.add_argument("--container-name", required=True)
    ap.add_argument("--ordinal", type=int, default=0, help="a StatefulSet pod's ordinal")
    a = ap.parse_args()
    docs = [d for d in yaml.safe_load_all(pathlib.Path(a.rendered).read_text()) if d]
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    secrets = json.loads(pathlib.Path(a.secrets).read_text())
    try:
        obj = next(d for d in docs if d["kind"] == a.kind and d["metadata"]["name"] == a.name)
    except StopIteration:
        die(f"no {a.kind}/{a.name} in {a.rendered}")
    pod = obj["spec"]["template"]
    spec = pod["spec"]
    c = spec["containers"][0]
    unknown = set(c) - KNOWN_CONTAINER
    if unknown:
        die(f"{a.kind}/{a.name}: container fields this test cannot reproduce: {sorted(unknown)}")
    pod_name = f"{a.name}-{a.ordinal}" if a.kind == "StatefulSet" else f"{a.name}-test"
    labels = dict(pod["metadata"].get("labels", {}))
    if a.kind == "StatefulSet":
        labels["apps.kubernetes.io/pod-index"] = str(a.ordinal)

    argv = ["--name", a.container_name, "--network", "host", "--pull", "never",
            "--hostname", pod_name]
    # security context: pod level, then the container's
    sc = dict(spec.get("securityContext", {}))
    sc.update(c.get("securityContext", {}))
    if "runAsUser" in sc:
        argv += ["--user", f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"]
    if sc.get("readOnlyRootFilesystem"):
        argv += ["--read-only"]
    if sc.get("allowPrivilegeEscalation") is False:
        argv += ["--security-opt", "no-new-privileges"]
    for cap in sc.get("capabilities", {}).get("drop", []):
        argv += ["--cap-drop", cap.lower()]
    limit = c.get("resources", {}).get("limits", {}).get("memory")
    if limit:
        argv += ["--memory", limit.replace("Gi", "g").replace("Mi", "m")]

    for e in c.get("env", []):
        if "value" in e:
            value = str(e["value"])
        elif "valueFrom" in e:
            vf = e["valueFrom"]
            if "fieldRef" in vf:
                path = vf["fieldRef"]["fieldPath"]
                if path.startswith("metadata.labels['"):
                    key = path[len("metadata.labels['"):-2]
                    if key not in labels:
                        die(f"env {e['name']}: label {key} is not on the pod")
                    value = labels[key]
                elif path == "metadata.name":
                    value = pod_name
                elif path == "metadata.namespace":
                    value = "corral"
                else:
                    die(f"env {e['name']}: fieldRef {path} not reproduced")
            elif "secretKeyRef" in vf:
                ref = vf["secretKeyRef"]
                try:
                    value = secrets[ref["name"]][ref["key"]]
                except KeyError:
                    die(f"env {e['name']}: the test has no secret {ref['name']}/{ref['key']}")
            elif "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                value = configmaps[ref["name"]][ref["key"]]
            else:
                die(f"env {e['name']}: valueFrom {list(vf)} not reproduced")
        else:
            die(f"env {e['name']} has no value")
        argv += ["--env", f"{e['name']}={value}"]

    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    claims = {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
    files = pathlib.Path(a.files)
    for m in c.get("volumeMounts", []):
        name, path = m["name"], m["mountPath"]
        if name in claims:
            die(f"volume {name} is a PVC; the test renders emptyDir state (persistence.enabled=false)")
        v = volumes.get(name) or die(f"mount of unknown volume {name}")
        if "emptyDir" in v:
            # an emptyDir belongs to the pod's user (fsGroup); podman's U option chowns the tmpfs
            argv += ["--tmpfs", f"{path}:rw,U"]
            continue
        if "configMap" in v:
            data = configmaps.get(v["configMap"]["name"])
            if data is None:
                die(f"volume {name}: ConfigMap {v['configMap']['name']} is not in the render")
        elif "secret" in v:
            data = secrets.get(v["secret"]["secretName"])
            if data is None:
                die(f"volume {name}: the test has no secret {v['secret']['secretName']}")
        else:
            die(f"volume {name}: kind {sorted(set(v) - {'name'})} not reproduced")
        d = files / name
        d.mkdir(parents=True, exist_ok=True)
        for k, text in data.items():
            (d / k).write_text(text)
        argv += ["--volume", f"{d}:{path}:ro,z"]

    if c.get("command"):
        argv += ["--entrypoint", json.dumps(c["command"])]
    argv += [c["image"]] + [str(x) for x in c.get("args", [])]

    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    probes = {}
    for kind in ("readinessProbe", "livenessProbe"):
        g = c.get(kind, {}).get("httpGet")
        if g:
            port = ports[g["port"]] if isinstance(g["port"], str) else g["port"]
            probes[kind] = f"http://127.0.0.1:{port}{g['path']}"
    print(json.dumps({"argv": argv, "probes": probes, "grace": spec.get("terminationGracePeriodSeconds", 30)}))


if __name__ == "__main__":
    main()
