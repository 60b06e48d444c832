#!/usr/bin/env bash
# Static checks of the deployment files. No container engine runs on the dev
# and CI machines, so the image is never built here; this is what can be
# checked without one:
#   1. hadolint on Dockerfile and deploy/django.Dockerfile (.hadolint.yaml:
#      any finding fails unless ignored there with its reason);
#   2. deploy/compose.yaml against the Compose specification's JSON schema
#      (check-jsonschema's vendored copy: no download);
#   3. `systemd-analyze verify` and an offline `systemd-analyze security`
#      bound on deploy/chat-service.service (SKIPPED, loudly, without systemd);
#   4. consistency: the image builds with `cargo build --release --locked` on
#      a Rust new enough for Cargo.toml and Cargo.lock, on the runtime's
#      Debian release; every variable the files set or name is a real one
#      (chat-service's in src/config.rs and README's Configuration table, the
#      reference Django's in its settings.py); compose references resolve;
#      stop timeouts cover the 3 shutdown steps.
# The tools come from PyPI into a virtualenv of their own (target/ by default).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO_ROOT"

# ensure_venv (lib/common.sh) creates it, installing python3-venv when root and
# needed, and skips pip when the requirement file is unchanged.
VENV_DIR="${CHAT_DEPLOY_VENV_DIR:-$REPO_ROOT/target/deploy-check-venv}"
ensure_venv deploy/check-requirements.txt
venv_bin="$VENV_DIR/bin"

failures=()
fail() { echo "check_deploy: FAILED: $*" >&2; failures+=("$1"); }

echo "-- hadolint $("$venv_bin/hadolint" --version | awk '{print $NF}'): Dockerfile deploy/django.Dockerfile"
"$venv_bin/hadolint" --no-color --config .hadolint.yaml Dockerfile deploy/django.Dockerfile \
  || fail "hadolint"

echo "-- deploy/compose.yaml against the Compose specification schema"
"$venv_bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml \
  || fail "compose schema"

echo "-- deploy/chat-service.service"
if command -v systemd-analyze >/dev/null 2>&1; then
  unit_dir="$(mktemp -d /tmp/check-deploy.XXXXXX)"
  trap 'rm -rf "$unit_dir"' EXIT
  # verify insists that ExecStart's binary exists; it is not installed here,
  # so a copy of the unit points at a stub. Everything else is as shipped.
  printf '#!/bin/sh\n' > "$unit_dir/chat-service-stub"
  chmod 755 "$unit_dir/chat-service-stub"
  sed "s|^ExecStart=/usr/local/bin/chat-service|ExecStart=$unit_dir/chat-service-stub|" \
    deploy/chat-service.service > "$unit_dir/chat-service.service"
  grep -q "^ExecStart=$unit_dir/chat-service-stub" "$unit_dir/chat-service.service" \
    || fail "unit: ExecStart is not /usr/local/bin/chat-service"
  # verify exits 0 on an unknown key or a bad value (it ignores them), so any
  # output at all is a failure.
  if ! verify_out="$(systemd-analyze verify "$unit_dir/chat-service.service" 2>&1)" || [ -n "$verify_out" ]; then
    printf '%s\n' "$verify_out" >&2
    fail "systemd-analyze verify"
  else
    echo "systemd-analyze verify: clean"
  fi
  # Keeps the hardening from eroding: exposure 1.6 when written; fail above 2.0.
  if security_out="$(systemd-analyze security --offline=true --threshold=20 "$unit_dir/chat-service.service" 2>&1)"; then
    printf '%s\n' "$security_out" | grep 'Overall exposure' || true
  else
    printf '%s\n' "$security_out" | grep -E '✗|Overall' >&2 || true
    fail "systemd-analyze security (exposure above 2.0)"
  fi
else
  echo "SKIPPED: systemd-analyze verify: systemd-analyze is not installed (Debian package systemd;"
  echo "SKIPPED: not installed by this script: it is an init system, too much to pull in for a lint)."
fi

echo "-- consistency of the deployment files with the code"
"$venv_bin/python" - <<'PY' || fail "consistency"
import json, re, subprocess, sys
from pathlib import Path

import yaml

errors = []
def check(ok, message):
    if not ok:
        errors.append(message)

def read(path):
    return Path(path).read_text(encoding="utf-8")

def version(text):
    # "1.89" and "1.89.0" are the same version.
    parts = [int(part) for part in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))

# --- chat-service's variables: the code, and README's table
config_rs = read("src/config.rs") + read("src/config/settings.rs")
config_vars = set(re.findall(r'\benv\s*=\s*"([A-Z][A-Z0-9_]*)"', config_rs))
check(len(config_vars) > 20, f"found only {len(config_vars)} variables in src/config.rs: has its form changed?")
readme = read("README.md")
section = re.search(r"^## Configuration\n(.*?)^## ", readme, re.S | re.M)
readme_vars = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", section.group(1) if section else "", re.M))
check(readme_vars, "README.md has no Configuration table")
# The reference Django's own variables (its settings read them from os.environ).
django_vars = set(re.findall(r'(?:environ\.get|env_flag)\(\s*"([A-Z][A-Z0-9_]*)"',
                             read("scripts/django_backend/backend/settings.py")))

def chat_var(name, where):
    check(name in config_vars, f"{where}: {name} is not a chat-service variable (src/config.rs)")
    check(name in readme_vars, f"{where}: {name} is not in README.md's Configuration table")

TOKEN = re.compile(r"\b(?:CHAT|MONGO|DJANGO)_[A-Z0-9_]*[A-Z0-9]\b")

def default_of(name):
    # The #[arg(...)] attribute that names the variable, and its default_value_t.
    at = config_rs.index(f'env = "{name}"')
    start = config_rs.rindex("#[arg(", 0, at)
    end = config_rs.index(")]", at)
    return int(re.search(r"default_value_t\s*=\s*([\d_]+)", config_rs[start:end]).group(1).replace("_", ""))

# Shutdown: stop accepting + HTTP and WebSockets, shards, writer flush: each
# step bounded by CHAT_SHUTDOWN_TIMEOUT_S (src/server.rs).
SHUTDOWN_STEPS = 3
shutdown_default = default_of("CHAT_SHUTDOWN_TIMEOUT_S")

def seconds(text):
    text = str(text).strip()
    total, found = 0.0, False
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text):
        found = True
        total += float(amount) * {"ms": 0.001, "s": 1, "": 1, "m": 60, "h": 3600}[unit]
    check(found, f"cannot read a duration from {text!r}")
    return total

# --- Dockerfile
dockerfile = read("Dockerfile")
instructions = re.sub(r"\\\n", " ", dockerfile)
runs = [line for line in instructions.splitlines() if line.startswith("RUN ")]
builds = [run for run in runs if "cargo build" in run]
check(len(builds) == 1 and re.search(r"cargo build --release --locked(\s|$)", builds[0]),
      "Dockerfile: the build must run `cargo build --release --locked` (as CI does), once")
froms = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
check(len(froms) == 2, f"Dockerfile: expected a builder and a runtime stage, found FROM {froms}")
builder = re.fullmatch(r"rust:(\d+\.\d+(?:\.\d+)?)-bookworm", froms[0]) if froms else None
check(builder, f"Dockerfile: the builder must be rust:<version>-bookworm, not {froms[:1]}")
check(froms[-1:] == ["debian:bookworm-slim"],
      "Dockerfile: the runtime must be debian:bookworm-slim (the builder's Debian release: same glibc)")
if builder:
    rust = version(builder.group(1))
    cargo_toml = read("Cargo.toml")
    msrv = re.search(r'^rust-version\s*=\s*"([\d.]+)"', cargo_toml, re.M).group(1)
    check(rust >= version(msrv), f"Dockerfile: Rust {builder.group(1)} is older than Cargo.toml's rust-version {msrv}")
    # What Cargo.lock resolves for the service (normal and build dependencies)
    # may need a newer compiler than Cargo.toml says; `cargo build --locked`
    # refuses to build them on an older one.
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--locked"],
                          capture_output=True, text=True)
    if meta.returncode != 0:
        errors.append("cargo metadata --locked failed: " + meta.stderr.strip()[-500:])
    else:
        meta = json.loads(meta.stdout)
        packages = {p["id"]: p for p in meta["packages"]}
        nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
        root = next(p["id"] for p in meta["packages"] if p["name"] == "chat-service" and p["source"] is None)
        seen, todo = set(), [root]
        while todo:
            node = nodes[todo.pop()]
            if node["id"] in seen:
                continue
            seen.add(node["id"])
            for dep in node["deps"]:
                if any(kind["kind"] in (None, "build") for kind in dep["dep_kinds"]):
                    todo.append(dep["pkg"])
        needs = max((version(packages[i]["rust_version"]), packages[i]["name"] + " " + packages[i]["version"])
                    for i in seen if packages[i].get("rust_version"))
        check(rust >= needs[0], f"Dockerfile: Rust {builder.group(1)} cannot build Cargo.lock's {needs[1]} "
                                f"(rust-version {'.'.join(map(str, needs[0]))})")
        # The README tells users to install at least Cargo.toml's rust-version.
        check(version(msrv) >= needs[0], f"Cargo.toml: rust-version {msrv} is older than Cargo.lock's {needs[1]} "
                                         f"needs ({'.'.join(map(str, needs[0]))})")
        print(f"builder Rust {builder.group(1)}: Cargo.toml asks {msrv}, Cargo.lock's dependencies "
              f"{'.'.join(map(str, needs[0]))} ({needs[1]})")
for key in re.findall(r"^ENV\s+(.*?)$", instructions, re.M):
    for name in re.findall(r"([A-Z][A-Z0-9_]*)=", key):
        chat_var(name, "Dockerfile ENV")
check(re.search(r"^USER\s+[1-9]\d*:[1-9]\d*\s*$", dockerfile, re.M), "Dockerfile: USER must be a fixed non-root uid:gid")
check(re.search(r"^HEALTHCHECK\b.*?/healthz", instructions, re.M), "Dockerfile: HEALTHCHECK must probe /healthz")
check(re.search(r"^STOPSIGNAL\s+SIGTERM\s*$", dockerfile, re.M), "Dockerfile: STOPSIGNAL SIGTERM")
for token in TOKEN.findall(dockerfile):
    check(token in config_vars, f"Dockerfile names {token}, not a chat-service variable")
django_dockerfile = read("deploy/django.Dockerfile")
for name in re.findall(r"([A-Z][A-Z0-9_]*)=", " ".join(re.findall(r"^ENV\s+(.*?)$", re.sub(r"\\\n", " ", django_dockerfile), re.M))):
    check(name in django_vars or name.startswith("PYTHON"), f"deploy/django.Dockerfile ENV {name}: not read by the reference Django")

# --- compose
compose_text = read("deploy/compose.yaml")
compose = yaml.safe_load(compose_text)
services = compose.get("services", {})
for token in TOKEN.findall(compose_text):
    check(token in config_vars or token in django_vars,
          f"deploy/compose.yaml names {token}: neither chat-service's nor the reference Django's variable")
chat_services = 0
for name, service in services.items():
    where = f"deploy/compose.yaml service {name}"
    build = service.get("build")
    if isinstance(build, dict):
        context = Path("deploy") / build.get("context", ".")
        check(context.is_dir(), f"{where}: build context {context} does not exist")
        check((context / build.get("dockerfile", "Dockerfile")).is_file(), f"{where}: its dockerfile does not exist")
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) if "=" in item else (item, None) for item in environment)
    is_chat = isinstance(build, dict) and build.get("dockerfile", "Dockerfile") == "Dockerfile"
    is_django = isinstance(build, dict) and build.get("dockerfile") == "deploy/django.Dockerfile"
    if is_chat:
        chat_services += 1
        for key in environment:
            chat_var(key, where)
        check(not ("MONGO_URI" in environment and "CHAT_POSTGRES_URL" in environment),
              f"{where}: MONGO_URI and CHAT_POSTGRES_URL together (the service refuses to start)")
        timeout = float(environment.get("CHAT_SHUTDOWN_TIMEOUT_S", shutdown_default))
        grace = seconds(service.get("stop_grace_period", "10s"))
        check(grace > SHUTDOWN_STEPS * timeout,
              f"{where}: stop_grace_period {grace:g}s does not cover {SHUTDOWN_STEPS} x CHAT_SHUTDOWN_TIMEOUT_S={timeout:g}s")
    elif is_django:
        for key in environment:
            check(key in django_vars, f"{where}: {key} is not read by the reference Django (settings.py)")
    depends = service.get("depends_on", {})
    for target in (depends if isinstance(depends, (dict, list)) else []):
        check(target in services, f"{where}: depends on {target}, which is not a service")
        if target in services and not service.get("profiles"):
            check(not services[target].get("profiles"),
                  f"{where}: runs without a profile but depends on {target}, which has one")
check(chat_services >= 1, "deploy/compose.yaml: no service is built from the Dockerfile")
check("mongo" in services and services["mongo"].get("profiles") == ["mongo"],
      "deploy/compose.yaml: MongoDB belongs in the optional profile `mongo`")

# --- env.example
env_example = read("deploy/env.example")
for name in re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", env_example, re.M):
    chat_var(name, "deploy/env.example")
for token in TOKEN.findall(env_example):
    chat_var(token, "deploy/env.example (text)")

# --- the systemd unit
unit = read("deploy/chat-service.service")
unit_env = {}
for assignment in re.findall(r"^Environment=(.*)$", unit, re.M):
    for name, value in re.findall(r'"?([A-Z][A-Z0-9_]*)=([^"\s]*)"?', assignment):
        unit_env[name] = value
        chat_var(name, "deploy/chat-service.service Environment=")
for token in TOKEN.findall(unit):
    chat_var(token, "deploy/chat-service.service (text)")
stop = re.search(r"^TimeoutStopSec=(\S+)", unit, re.M)
timeout = float(unit_env.get("CHAT_SHUTDOWN_TIMEOUT_S", shutdown_default))
check(stop and seconds(stop.group(1)) > SHUTDOWN_STEPS * timeout,
      f"deploy/chat-service.service: TimeoutStopSec must exceed {SHUTDOWN_STEPS} x CHAT_SHUTDOWN_TIMEOUT_S={timeout:g}s")
check(re.search(r"^StateDirectory=chat-service$", unit, re.M) and unit_env.get("CHAT_DATA_DIR") == "/var/lib/chat-service",
      "deploy/chat-service.service: CHAT_DATA_DIR must be its StateDirectory, /var/lib/chat-service")

# --- docs/deploy.md names only real variables
for token in TOKEN.findall(read("docs/deploy.md")):
    check(token in config_vars or token in django_vars, f"docs/deploy.md names {token}: not a variable of chat-service or the reference Django")

errors = list(dict.fromkeys(errors))
for error in errors:
    print("  " + error, file=sys.stderr)
if errors:
    sys.exit(1)
print(f"consistent: {len(config_vars)} chat-service variables known; compose, env.example, the unit, docs/deploy.md")
PY

if [ "${#failures[@]}" -gt 0 ]; then
  echo "check_deploy: ${#failures[@]} check(s) failed: ${failures[*]}" >&2
  exit 1
fi
echo "check_deploy: all passed"
