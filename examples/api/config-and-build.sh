#!/usr/bin/env bash
# Creates a build configuration through the HTTP API with curl, then runs the most recent build
# again under it and waits for the result.
#
#   examples/api/config-and-build.sh [CONFIG_NAME] [CORES]
set -euo pipefail
DATA_DIR=${BUILDNET_DATA_DIR:-$HOME/.buildnet}
URL=${BUILDNET_ADDRESS:-$(cat "$DATA_DIR/address")}
KEY=${BUILDNET_TOKEN:-$(cat "$DATA_DIR/admin.key")}
NAME=${1:-curl-config}
CORES=${2:-1}
api() { curl -sS --fail-with-body -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$@"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

# Plan Appendix B's format: this node ("local") with $CORES cores.
api -X POST "$URL/api/configs" -d "{
  \"name\": \"$NAME\",
  \"resources\": {
    \"cpu\": { \"cores\": $CORES, \"node_allocations\": [ { \"node_id\": \"local\", \"cores\": $CORES } ], \"priority\": \"normal\" },
    \"memory\": { \"gb\": 0.5, \"priority\": \"normal\" },
    \"storage\": { \"volumes\": [], \"min_class\": \"any\" },
    \"tools\": [], \"runtimes\": []
  }
}" | field '["id"]' | sed "s/^/created configuration $NAME: /"

LAST=$(api "$URL/api/builds?limit=1" | field '["builds"][0]["id"]')
NEW=$(api -X POST "$URL/api/build/$LAST/rerun" -d "{\"force\": true, \"config\": \"$NAME\"}" | field '["build_id"]')
echo "started $NEW with $NAME"
while [ "$(api "$URL/api/build/$NEW" | field '["status"]')" = running ]; do sleep 0.2; done
STATUS=$(api "$URL/api/build/$NEW" | field '["status"]')
echo "$NEW: $STATUS"
[ "$STATUS" = succeeded ]
