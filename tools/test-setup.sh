#!/usr/bin/env bash
# Installs everything the demo and the test suite need on a fresh Debian machine (run as root)
# and builds the vCenter simulator. Safe to run twice: each step skips what is already done.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

log() { printf 'test-setup: %s\n' "$*" >&2; }

# 1. Debian packages (bindep.txt lists them for humans and bindep users).
pkgs=(golang-go golang-github-vmware-govmomi-dev golang-github-google-uuid-dev qemu-utils python3-vmdkstream
      zookeeper graphviz)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    log "missing Debian packages: ${missing[*]}; run this script as root (it uses apt-get)"
    exit 2
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The project's virtualenv (.venv) with the package installed in develop mode.
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$py" -m venv .venv
fi
stamp=.venv/.vsan-flows-reqs
want=$(cat requirements.txt test-requirements.txt setup.cfg | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing Python requirements into .venv"
  .venv/bin/pip install -q --upgrade pip setuptools wheel >/dev/null
  .venv/bin/pip install -q -r requirements.txt -r test-requirements.txt
  .venv/bin/pip install -q --no-build-isolation -e .
  echo "$want" > "$stamp"
fi

# 2b. nova (the compute driver's host, vsan_flows/nova/). It installs beside our requirements
# without changing any version (pip check); its tests use the glance-api of step 3, and
# test_nova_rest_api.py nova's own functional harness (placement, oslotest, wsgi-intercept).
if ! .venv/bin/python -c 'import nova, glanceclient, placement, oslotest, wsgi_intercept' 2>/dev/null; then
  log "installing nova 34.0.0 into .venv"
  .venv/bin/pip install -q -r nova-requirements.txt
fi
# nova 34 loads compute_driver only as 'nova.virt.<name>': this one-line .pth installs the
# alias that makes 'vsan_flows.nova.driver.VsanVCDriver' loadable (vsan_flows/nova/alias.py).
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo 'import vsan_flows.nova.alias' > "$site/vsan_flows_nova.pth"

# 3. glance-api and keystone for the Glance tests, each in its own virtualenv (.glance-venv,
#    .keystone-venv): the servers pin much of OpenStack that the project's .venv need not
#    carry; the tests start them under gunicorn (tests/functional/glance_api.py, keystone.py).
#    Pinned so their behaviour (format inspector, status codes, policies) is the one the tests
#    were written against.
server_venv() {  # server_venv DIR PIN...: (re)install the pins when they changed
  local dir=$1; shift
  local stamp=$dir/.vsan-flows-pins
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$*" ]; then
    log "installing $* into $dir"
    [ -x "$dir/bin/python" ] || "$py" -m venv "$dir"
    "$dir/bin/pip" install -q --upgrade pip setuptools wheel >/dev/null
    "$dir/bin/pip" install -q "$@"
    echo "$*" > "$stamp"
  fi
}
server_venv .glance-venv glance==33.0.0 gunicorn==23.0.0
server_venv .keystone-venv keystone==30.0.0 gunicorn==23.0.0

# 4. The vCenter simulator (skips the Go build when its sources did not change).
bash tools/vcsim/build.sh
log "ready"
