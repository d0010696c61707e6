#!/usr/bin/env bash
# Offline checks of the Helm chart helm/corral (no cluster can run here), part of `make test`:
#   1. `helm lint --strict` with the default values and every file in helm/corral/ci/
#      (values.schema.json is enforced by lint and template);
#   2. `helm template` of each, every object validated by helm/tests/check_manifests.py: the
#      Kubernetes OpenAPI schemas of kubernetes-validate for Kubernetes $KUBE_VERSION (strict),
#      the vendored CRD schemas (helm/tests/crd-schemas) for ScaledObject, ServiceMonitor and
#      PrometheusRule, and Corral's own rules (topic manifest = deploy/topics.yaml, alert and
#      dashboard metrics registered by the services, KEDA capped at the partition count, instance
#      id from the pod ordinal, probes);
#   3. values the chart must refuse are refused.
#
#   helm/test.sh            install the tools when missing, then check
#   helm/test.sh --install  only install the tools (`make deps`)
#
# Tools, pinned, cached under $CORRAL_CACHE (default ~/.cache/corral): helm $HELM_VERSION built
# with Go from the module proxy, and a venv with kubernetes-validate, jsonschema and PyYAML from
# PyPI. A tool that cannot be installed is an error, never a skipped check.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
chart="$root/helm/corral"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
KUBE_VERSION="${KUBE_VERSION:-1.33.0}"
cache="${CORRAL_CACHE:-${HOME:-/root}/.cache/corral}"
helm="$cache/helm-$HELM_VERSION/helm"
venv="$cache/chart-venv"
PY_PACKAGES=(kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.4)
out="$root/.run/helm"

log() { echo "helm/test.sh: $*" >&2; }
die() { echo "helm/test.sh: error: $*" >&2; exit 1; }

install_tools() {
  if [[ ! -x "$helm" ]]; then
    # the machine's Go, also when /usr/local/go/bin is not on PATH (a non-login shell)
    if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then PATH="/usr/local/go/bin:$PATH"; fi
    command -v go >/dev/null 2>&1 || die "go is missing: it builds helm $HELM_VERSION (go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION)"
    log "building helm $HELM_VERSION with $(go version | cut -d' ' -f3) (a few minutes, once)"
    mkdir -p "$(dirname "$helm")"
    GOBIN="$(dirname "$helm")" GOFLAGS=-mod=mod go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
      || die "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed"
  fi
  local want
  want="$(printf '%s\n' "${PY_PACKAGES[@]}" | sort | tr '\n' ' ')"
  if [[ ! -f "$venv/.packages" || "$(cat "$venv/.packages")" != "$want" ]]; then
    command -v python3 >/dev/null 2>&1 || die "python3 is missing"
    log "installing ${PY_PACKAGES[*]} into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (deploy/local/install-deps.sh installs python3-venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}" || die "pip install ${PY_PACKAGES[*]} failed"
    echo "$want" >"$venv/.packages"
  fi
}

install_tools
if [[ "${1:-}" == "--install" ]]; then exit 0; fi

t0=$SECONDS
mkdir -p "$out"
rendered=()
for values in default "$chart"/ci/*-values.yaml; do
  if [[ "$values" == default ]]; then name=default; args=(); else
    name="$(basename "$values" -values.yaml)"; args=(-f "$values"); fi
  "$helm" lint --strict --quiet "$chart" "${args[@]}" --kube-version "$KUBE_VERSION" >"$out/$name.lint" 2>&1 \
    || { cat "$out/$name.lint" >&2; die "helm lint --strict failed with $name values"; }
  "$helm" template corral "$chart" --namespace corral "${args[@]}" --kube-version "$KUBE_VERSION" \
    >"$out/$name.yaml" 2>"$out/$name.err" || { cat "$out/$name.err" >&2; die "helm template failed with $name values"; }
  rendered+=("$name=$out/$name.yaml")
done
"$venv/bin/python" "$root/helm/tests/check_manifests.py" --kube-version "$KUBE_VERSION" --repo "$root" \
  --dashboard "$chart/dashboards/corral.json" "${rendered[@]}"

# values the chart must refuse, each with the message that says why
refuse() { # description expected-message helm-args...
  local what="$1" msg="$2"; shift 2
  if "$helm" template corral "$chart" --kube-version "$KUBE_VERSION" "$@" >/dev/null 2>"$out/refused.err"; then
    die "accepted $what"
  fi
  grep -qF -- "$msg" "$out/refused.err" || { cat "$out/refused.err" >&2; die "refused $what, but without '$msg'"; }
}
refuse "more StatefulSet replicas than partitions" "more than topics.partitions" --set compute.replicas=7
refuse "a runtime-owned Kafka property" "/kafka/properties" --set-string 'kafka.properties.group\.id=x'
refuse "a password among the plain properties" "/kafka/properties" --set-string 'kafka.properties.sasl\.password=x'
refuse "an unknown value" "additional properties" --set computee.replicas=1
refuse "replication factor 0" "replicationFactor" --set kafka.replicationFactor=0
log "lint, render, validate (${#rendered[@]} values files, Kubernetes $KUBE_VERSION) and refusals ok in $((SECONDS - t0)) s"
