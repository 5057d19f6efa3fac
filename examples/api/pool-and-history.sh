#!/usr/bin/env bash
# Reads the pool, the last builds and the ledger through the HTTP API with curl.
set -euo pipefail
DATA_DIR=${BUILDNET_DATA_DIR:-$HOME/.buildnet}
URL=${BUILDNET_ADDRESS:-$(cat "$DATA_DIR/address")}
KEY=${BUILDNET_TOKEN:-$(cat "$DATA_DIR/admin.key")}
get() { curl -sS --fail-with-body -H "Authorization: Bearer $KEY" "$URL$1"; }

POOL=$(cat <<'PY'
import json, sys
p = json.load(sys.stdin)
print(f"{len(p['nodes'])} nodes, {p['aggregate']['total_cpu_cores']} cores, coordinator {p['coordinator']}")
PY
)
echo "== pool"; get /api/pool | python3 -c "$POOL"
echo "== builds"; get '/api/builds?limit=5' | python3 -c 'import json,sys; [print(b["id"], b["status"], b["duration_ms"], "ms") for b in json.load(sys.stdin)["builds"]]'
echo "== ledger"; get '/api/ledger?types=BuildStarted,BuildCompleted,BuildFailed&limit=5' | python3 -c 'import json,sys; [print(e["entry_type"], e["data"].get("build_id")) for e in json.load(sys.stdin)["entries"]]'
