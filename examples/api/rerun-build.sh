#!/usr/bin/env bash
# Runs an earlier build again through the HTTP API with nothing but curl, and waits for it.
#
#   examples/api/rerun-build.sh [BUILD_ID] [--force]
#
# Without BUILD_ID the most recent build is used. The node and key come from BUILDNET_ADDRESS
# and BUILDNET_TOKEN, else from the local data dir (~/.buildnet or BUILDNET_DATA_DIR).
set -euo pipefail
DATA_DIR=${BUILDNET_DATA_DIR:-$HOME/.buildnet}
URL=${BUILDNET_ADDRESS:-$(cat "$DATA_DIR/address")}
KEY=${BUILDNET_TOKEN:-$(cat "$DATA_DIR/admin.key")}
api() { curl -sS --fail-with-body -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$@"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

ID=${1:-}
FORCE=false
[ "${2:-}" = "--force" ] || [ "${1:-}" = "--force" ] && FORCE=true
if [ -z "$ID" ] || [ "$ID" = "--force" ]; then
  ID=$(api "$URL/api/builds?limit=1" | field '["builds"][0]["id"]')
fi

NEW=$(api -X POST "$URL/api/build/$ID/rerun" -d "{\"force\": $FORCE}" | field '["build_id"]')
echo "started $NEW (again from $ID)"
while :; do
  STATUS=$(api "$URL/api/build/$NEW" | field '["status"]')
  [ "$STATUS" != running ] && break
  sleep 0.2
done
SHOW=$(cat <<'PY'
import json, sys
b = json.load(sys.stdin)
print(f"{b['id']}: {b['status']} in {b['duration_ms']} ms")
for p in b["packages"]:
    cache = "  (cache)" if p["cache_hit"] else ""
    print(f"  {p['name']:<12} {p['state']:<10} node {p['node'] or '-'}{cache}")
PY
)
api "$URL/api/build/$NEW" | python3 -c "$SHOW"
[ "$STATUS" = succeeded ]
