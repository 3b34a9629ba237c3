#!/usr/bin/env python3
"""Validates rendered TPS manifests (kubectl kustomize output); run by
scripts/check-k8s.sh inside its private virtualenv.

For each rendered file (one per overlay):

1. Schema: every object against the Kubernetes OpenAPI schemas of each
   requested version (the kubernetes-validate package, strict: unknown fields
   are errors). Kinds it does not know are failures, except the CRD kinds in
   CRD_SCHEMAS, validated against the JSON schemas in this directory (KEDA's
   ScaledObject).
2. Policy: the project's own rules, which no schema knows (probes, security
   context, resources, PDBs, autoscaler bounds, the KEDA trigger names against
   shared/queue/src/names.rs, references between objects).

Prints what it checked; exits 1 on any failure. Never prints Secret values.
"""

import argparse
import json
import os
import re
import sys

import jsonschema
import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))

# (apiVersion, kind) -> JSON schema file in this directory.
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject-v1alpha1.schema.json",
}

# The TPS binaries and what each serves (ports as in docs/configuration.md).
TPS_BINARIES = {"tps-gateway", "tps-worker", "tps-aggregator"}
POOLS = ("fast", "slow")
PRIORITIES = (1, 2, 3, 4)
TPS_UID = 10001


class Report:
    def __init__(self):
        self.failures = 0
        self.checks = 0

    def ok(self, msg):
        self.checks += 1
        print(f"    ok    {msg}")

    def fail(self, msg):
        self.checks += 1
        self.failures += 1
        print(f"    FAIL  {msg}")

    def note(self, msg):
        print(f"    note  {msg}")

    def expect(self, cond, msg, why=""):
        if cond:
            self.ok(msg)
        else:
            self.fail(msg + (f": {why}" if why else ""))
        return cond


def ident(o):
    md = o.get("metadata", {})
    ns = md.get("namespace")
    name = md.get("name", "?")
    return f"{o.get('kind', '?')}/{ns + '/' if ns else ''}{name}"


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# ---------------------------------------------------------------- schemas


def check_schemas(objs, versions, r):
    crd = {}
    for key, fname in CRD_SCHEMAS.items():
        with open(os.path.join(HERE, fname)) as f:
            schema = json.load(f)
        jsonschema.Draft202012Validator.check_schema(schema)
        crd[key] = jsonschema.Draft202012Validator(schema)
    for o in objs:
        key = (o.get("apiVersion"), o.get("kind"))
        if key in crd:
            errs = sorted(crd[key].iter_errors(o), key=lambda e: list(e.path))
            if errs:
                for e in errs:
                    path = "/".join(str(p) for p in e.path)
                    r.fail(f"{ident(o)} [{key[0]}, CRD schema {CRD_SCHEMAS[key]}] {path}: {e.message}")
            else:
                r.ok(f"{ident(o)} [{key[0]}: CRD schema {CRD_SCHEMAS[key]}, strict]")
            continue
        seen = []
        bad = False
        for v in versions:
            try:
                used = kubernetes_validate.validate(o, v, strict=True)
                seen.append(used)
            except kubernetes_validate.utils.SchemaNotFoundError as e:
                r.fail(f"{ident(o)}: {e.message} (and no CRD schema for it here)")
                bad = True
                break
            except kubernetes_validate.utils.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                r.fail(f"{ident(o)} [Kubernetes {v}] {path}: {e.message}")
                bad = True
        if not bad:
            r.ok(f"{ident(o)} [{o['apiVersion']}: Kubernetes {', '.join(seen)} OpenAPI, strict]")


# ---------------------------------------------------------------- policy


def by_kind(objs, kind):
    return [o for o in objs if o.get("kind") == kind]


def named(objs, kind, name):
    for o in by_kind(objs, kind):
        if o["metadata"]["name"] == name:
            return o
    return None


def tps_deployments(objs):
    out = []
    for d in by_kind(objs, "Deployment"):
        cs = d["spec"]["template"]["spec"].get("containers", [])
        if cs and (cs[0].get("command") or [""])[0] in TPS_BINARIES:
            out.append(d)
    return out


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def config_data(objs):
    """The tps-config ConfigMap's data (whatever its generated suffix)."""
    for cm in by_kind(objs, "ConfigMap"):
        if cm["metadata"]["name"].startswith("tps-config"):
            return cm.get("data", {})
    return {}


def selects(selector, labels):
    ml = (selector or {}).get("matchLabels", {})
    return bool(ml) and all(labels.get(k) == v for k, v in ml.items())


def check_tps_pods(objs, r):
    deps = tps_deployments(objs)
    r.expect(
        {d["metadata"]["name"] for d in deps} == {"gateway", "worker-fast", "worker-slow", "aggregator"},
        "TPS Deployments are gateway, worker-fast, worker-slow, aggregator",
        str(sorted(d["metadata"]["name"] for d in deps)),
    )
    for d in deps:
        name = d["metadata"]["name"]
        pod = d["spec"]["template"]["spec"]
        meta = d["spec"]["template"]["metadata"]
        c = pod["containers"][0]
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        grpc_port = ports.get("grpc")
        cmd = c.get("command", [])
        env = env_of(c)
        problems = []

        # Which binary, and the pool a worker serves.
        if name.startswith("worker-"):
            pool = name.split("-", 1)[1]
            if cmd[:1] != ["tps-worker"] or "--pool" not in cmd or cmd[cmd.index("--pool") + 1 : cmd.index("--pool") + 2] != [pool]:
                problems.append(f"command {cmd} is not tps-worker --pool {pool}")
        elif cmd[:1] != [f"tps-{name}"]:
            problems.append(f"command {cmd} is not tps-{name}")
        addr = (env.get("TPS_GRPC_ADDR") or {}).get("value", "")
        if grpc_port is None or not addr.endswith(f":{grpc_port}"):
            problems.append(f"TPS_GRPC_ADDR {addr!r} does not match the grpc port {grpc_port}")
        r.expect(not problems, f"{name}: binary, pool and gRPC listen address", "; ".join(problems))

        # Probes: native gRPC readiness on the gRPC port; liveness and startup present.
        rp = c.get("readinessProbe", {})
        r.expect(
            rp.get("grpc", {}).get("port") == grpc_port,
            f"{name}: readinessProbe is native gRPC on port {grpc_port}",
            f"got {rp}",
        )
        lp = c.get("livenessProbe", {})
        lp_ok = lp.get("grpc", {}).get("port") == grpc_port or lp.get("tcpSocket", {}).get("port") in ("grpc", grpc_port)
        kind = "gRPC" if "grpc" in lp else "tcpSocket" if "tcpSocket" in lp else "?"
        r.expect(lp_ok, f"{name}: livenessProbe on the gRPC port ({kind})", f"got {lp}")
        r.expect("startupProbe" in c, f"{name}: startupProbe (start-up waits for NATS)")

        # Resources.
        res = c.get("resources", {})
        missing = [
            f"{k}.{x}" for k in ("requests", "limits") for x in ("cpu", "memory") if x not in res.get(k, {})
        ]
        r.expect(not missing, f"{name}: requests and limits for cpu and memory", f"missing {missing}")

        # Security context.
        psc = pod.get("securityContext", {})
        csc = c.get("securityContext", {})
        problems = []
        if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
            problems.append("runAsNonRoot")
        if (csc.get("runAsUser") or psc.get("runAsUser")) != TPS_UID:
            problems.append(f"runAsUser {TPS_UID}")
        if ((csc.get("seccompProfile") or psc.get("seccompProfile")) or {}).get("type") != "RuntimeDefault":
            problems.append("seccompProfile RuntimeDefault")
        if csc.get("readOnlyRootFilesystem") is not True:
            problems.append("readOnlyRootFilesystem")
        if csc.get("allowPrivilegeEscalation") is not False:
            problems.append("allowPrivilegeEscalation false")
        if "ALL" not in csc.get("capabilities", {}).get("drop", []):
            problems.append("capabilities drop ALL")
        if csc.get("privileged"):
            problems.append("not privileged")
        r.expect(
            not problems,
            f"{name}: non-root uid {TPS_UID}, read-only root, no privilege escalation, drop ALL, seccomp RuntimeDefault",
            "missing " + ", ".join(problems),
        )

        # Prometheus scrape annotations (deploy/prometheus/prometheus-k8s.yml).
        ann = meta.get("annotations", {})
        r.expect(
            ann.get("prometheus.io/scrape") == "true" and str(ports.get("metrics")) == ann.get("prometheus.io/port"),
            f"{name}: prometheus.io/scrape and prometheus.io/port = the metrics port",
            f"annotations {ann}, metrics port {ports.get('metrics')}",
        )
        # The label prometheus-k8s.yml turns into the job name.
        r.expect(
            meta.get("labels", {}).get("app.kubernetes.io/name") == name
            and meta.get("labels", {}).get("app.kubernetes.io/part-of") == "tps",
            f"{name}: pod labels app.kubernetes.io/name={name} (the Prometheus job), app.kubernetes.io/part-of=tps (docs/runbook.md)",
        )
        # Settings from the ConfigMap; the RabbitMQ password never in plain env.
        refs = [e.get("configMapRef", {}).get("name", "") for e in c.get("envFrom", [])]
        r.expect(any(n.startswith("tps-config") for n in refs), f"{name}: settings from the tps-config ConfigMap")
        plain = [
            k for k, e in env.items()
            if "value" in e and re.search(r"PASSWORD|TOKEN", k) and e["value"]
        ]
        url = (env.get("RABBITMQ_URL") or {}).get("value", "")
        literal_pw = bool(re.match(r"amqp://[^:$]+:[^@$(]+@", url))
        r.expect(
            not plain and not literal_pw,
            f"{name}: no credential as a literal env value (Secret refs only)",
            f"literal: {plain or 'RABBITMQ_URL password'}",
        )


def check_pdbs(objs, r):
    pdbs = by_kind(objs, "PodDisruptionBudget")
    for d in tps_deployments(objs):
        name = d["metadata"]["name"]
        labels = d["spec"]["template"]["metadata"].get("labels", {})
        mine = [p for p in pdbs if selects(p["spec"].get("selector"), labels)]
        if not r.expect(len(mine) == 1, f"{name}: exactly one PodDisruptionBudget selects its pods", f"{len(mine)} do"):
            continue
        spec = mine[0]["spec"]
        replicas = d["spec"].get("replicas", 1)
        if "minAvailable" in spec:
            r.expect(
                isinstance(spec["minAvailable"], int) and spec["minAvailable"] < replicas,
                f"{name}: PDB minAvailable {spec['minAvailable']} < replicas {replicas} (a drain can proceed)",
            )
        else:
            r.expect(spec.get("maxUnavailable") not in (0, "0%"), f"{name}: PDB maxUnavailable {spec.get('maxUnavailable')} (a drain can proceed)")


def check_autoscaling(objs, r):
    deps = {d["metadata"]["name"]: d for d in by_kind(objs, "Deployment")}
    hpas = by_kind(objs, "HorizontalPodAutoscaler")
    sos = by_kind(objs, "ScaledObject")
    cfg = config_data(objs)
    targets = {}
    for h in hpas:
        t = h["spec"]["scaleTargetRef"]
        r.expect(t.get("kind") == "Deployment" and t["name"] in deps, f"HPA {h['metadata']['name']}: targets Deployment {t['name']} of this render")
        lo, hi = h["spec"].get("minReplicas", 1), h["spec"]["maxReplicas"]
        r.expect(1 <= lo <= hi, f"HPA {h['metadata']['name']}: bounds {lo}..{hi}")
        if t["name"] in deps:
            req = deps[t["name"]]["spec"]["template"]["spec"]["containers"][0].get("resources", {}).get("requests", {})
            uses_cpu = any(m.get("resource", {}).get("name") == "cpu" for m in h["spec"].get("metrics", []))
            if uses_cpu:
                r.expect("cpu" in req, f"HPA {h['metadata']['name']}: CPU utilisation has a CPU request to be a share of")
            replicas = deps[t["name"]]["spec"].get("replicas", 1)
            r.expect(lo <= replicas <= hi, f"HPA {h['metadata']['name']}: the Deployment's replicas ({replicas}) lie within its bounds")
        targets.setdefault(t["name"], []).append("HPA")

    namespace_suffix = cfg.get("TPS_NAMESPACE", "")
    heijunka = int(cfg.get("TPS_HEIJUNKA_POOL", "4"))
    nats_svc = named(objs, "Service", "nats")
    for so in sos:
        name = so["metadata"]["name"]
        ns = so["metadata"].get("namespace")
        spec = so["spec"]
        target = spec["scaleTargetRef"]["name"]
        targets.setdefault(target, []).append("ScaledObject")
        dep = deps.get(target)
        if not r.expect(dep is not None and target.startswith("worker-"), f"ScaledObject {name}: targets a worker Deployment of this render ({target})"):
            continue
        pool = target.split("-", 1)[1]
        stream = f"TPS_WORK_{pool.upper()}" + (f"_{namespace_suffix}" if namespace_suffix else "")
        trig = spec["triggers"]
        problems = []
        consumers = []
        for t in trig:
            m = t.get("metadata", {})
            if t.get("type") != "nats-jetstream":
                problems.append(f"trigger {t.get('name')} is {t.get('type')}")
                continue
            if m.get("stream") != stream:
                problems.append(f"stream {m.get('stream')} (want {stream})")
            if m.get("account") != "$G":
                problems.append(f"account {m.get('account')} (want $G: no NATS accounts are configured)")
            want_ep = f"nats.{ns}.svc.cluster.local:8222" if ns else None
            if want_ep and m.get("natsServerMonitoringEndpoint") != want_ep:
                problems.append(f"endpoint {m.get('natsServerMonitoringEndpoint')} (want {want_ep})")
            consumers.append(m.get("consumer"))
        want = [f"worker-{pool}-p{p}" for p in PRIORITIES]
        if sorted(consumers) != want:
            problems.append(f"consumers {consumers} (want one trigger for each of {want})")
        r.expect(not problems, f"ScaledObject {name}: {stream}, consumers {want[0]}..p4 (shared/queue/src/names.rs), account $G, endpoint in namespace {ns}", "; ".join(problems))

        mods = spec.get("advanced", {}).get("scalingModifiers")
        if mods:
            names = {t.get("name") for t in trig}
            used = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", mods["formula"]))
            r.expect(used <= names, f"ScaledObject {name}: formula {mods['formula']!r} names only its triggers", f"unknown {sorted(used - names)}")
            r.expect(used == names, f"ScaledObject {name}: formula uses every trigger (the whole pool's lag)", f"unused {sorted(names - used)}")
        lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        r.expect(lo >= 1, f"ScaledObject {name}: minReplicaCount {lo} >= 1 (workers also serve the RabbitMQ fallback, which KEDA cannot see)")
        r.expect(lo <= hi <= heijunka, f"ScaledObject {name}: maxReplicaCount {hi} <= TPS_HEIJUNKA_POOL {heijunka} (replicas past it can find nothing to pull)")
        replicas = dep["spec"].get("replicas", 1)
        r.expect(lo <= replicas <= hi, f"ScaledObject {name}: the Deployment's replicas ({replicas}) lie within {lo}..{hi}")

    if sos:
        ports = [p.get("port") for p in (nats_svc or {}).get("spec", {}).get("ports", [])]
        r.expect(8222 in ports, "Service nats exposes the monitoring port 8222 (KEDA's nats-jetstream scaler reads /jsz)")
        sts = named(objs, "StatefulSet", "nats")
        args = " ".join(sts["spec"]["template"]["spec"]["containers"][0].get("args", [])) if sts else ""
        r.expect(re.search(r"(-m|--http_port)[ =]8222", args) is not None and "-js" in args, f"NATS runs JetStream with monitoring on 8222 (args: {args})")
    for t, who in targets.items():
        r.expect(len(who) == 1, f"{t}: one autoscaler ({', '.join(who)})", "an HPA and a ScaledObject would fight")


def check_references(objs, r):
    cms = {o["metadata"]["name"] for o in by_kind(objs, "ConfigMap")}
    secrets = {o["metadata"]["name"]: o for o in by_kind(objs, "Secret")}
    external = set()
    missing_cm = set()
    used_keys = {}
    for o in by_kind(objs, "Deployment") + by_kind(objs, "StatefulSet"):
        for c in o["spec"]["template"]["spec"].get("containers", []):
            for ef in c.get("envFrom", []):
                n = ef.get("configMapRef", {}).get("name")
                if n and n not in cms:
                    missing_cm.add(n)
            for e in c.get("env", []):
                vf = e.get("valueFrom", {})
                if "configMapKeyRef" in vf and vf["configMapKeyRef"]["name"] not in cms:
                    missing_cm.add(vf["configMapKeyRef"]["name"])
                if "secretKeyRef" in vf:
                    ref = vf["secretKeyRef"]
                    used_keys.setdefault(ref["name"], set()).add((ref["key"], bool(ref.get("optional"))))
    r.expect(not missing_cm, "every ConfigMap referenced is in the render", f"missing {sorted(missing_cm)}")
    for name, keys in sorted(used_keys.items()):
        if name in secrets:
            data = set(secrets[name].get("data", {})) | set(secrets[name].get("stringData", {}))
            need = {k for k, opt in keys if not opt}
            r.expect(need <= data, f"Secret {name}: generated here, holds the keys referenced ({', '.join(sorted(k for k, _ in keys))})", f"missing {sorted(need - data)}")
        elif name.startswith("tps-secrets"):
            external.add(name)
        else:
            r.fail(f"Secret {name} is referenced but neither rendered nor the operator-made tps-secrets")
    for name in sorted(external):
        keys = sorted(k for k, _ in used_keys[name])
        r.note(f"Secret {name} is not in the render: the operator creates it (keys {', '.join(keys)})")
    for name, s in secrets.items():
        r.note(f"Secret {name}: keys {', '.join(sorted(s.get('data', {})))} (values not shown)")

    # Services select pods and name ports those pods have.
    pods = [
        (o["spec"]["template"]["metadata"].get("labels", {}), o["spec"]["template"]["spec"].get("containers", []))
        for o in by_kind(objs, "Deployment") + by_kind(objs, "StatefulSet")
    ]
    for svc in by_kind(objs, "Service"):
        sel = svc["spec"].get("selector", {})
        hits = [cs for labels, cs in pods if sel and all(labels.get(k) == v for k, v in sel.items())]
        problems = []
        if not hits:
            problems.append(f"selector {sel} matches no pod template")
        for p in svc["spec"].get("ports", []):
            tp = p.get("targetPort", p["port"])
            for cs in hits:
                names = {cp.get("name") for c in cs for cp in c.get("ports", [])}
                nums = {cp["containerPort"] for c in cs for cp in c.get("ports", [])}
                if tp not in names and tp not in nums:
                    problems.append(f"targetPort {tp} is not a container port")
        r.expect(not problems, f"Service {svc['metadata']['name']}: selects pods and their ports", "; ".join(problems))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubernetes-version", action="append", required=True)
    ap.add_argument("--policy", action="store_true", help="also apply the TPS policy checks (overlays)")
    ap.add_argument("files", nargs="+", metavar="LABEL=FILE")
    a = ap.parse_args()
    total = Report()
    for arg in a.files:
        label, _, path = arg.partition("=")
        objs = load(path)
        print(f"== {label}: {len(objs)} objects ({', '.join(sorted({o['kind'] for o in objs}))})")
        r = Report()
        print("  -- schemas")
        check_schemas(objs, a.kubernetes_version, r)
        if a.policy:
            print("  -- TPS policy")
            check_tps_pods(objs, r)
            check_pdbs(objs, r)
            check_autoscaling(objs, r)
            check_references(objs, r)
        print(f"  {label}: {r.checks - r.failures} of {r.checks} checks passed")
        total.checks += r.checks
        total.failures += r.failures
    print(f"validate.py: {total.checks - total.failures} passed, {total.failures} failed")
    return 1 if total.failures else 0


if __name__ == "__main__":
    sys.exit(main())
