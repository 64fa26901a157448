#!/bin/sh
# The e2e agent: runs inside the network-isolated sandbox and knows only what a real agent
# knows, PAPERCLIP_API_URL and PAPERCLIP_API_KEY (the bridge token). Arguments: the issue
# id, the Paperclip port on the host (which it must NOT reach), and a marker to write.
set -u
ISSUE=$1 HOST_PORT=$2 MARKER=$3
API=$PAPERCLIP_API_URL
failed=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; failed=1; }
# call METHOD PATH [JSON]: prints the status; the body goes to body.out
call() {
  if [ $# -ge 3 ]; then
    curl -sS -m 30 -o body.out -w '%{http_code}' -X "$1" -H "Authorization: Bearer $PAPERCLIP_API_KEY" \
      -H 'Content-Type: application/json' --data "$3" "$API$2"
  else
    curl -sS -m 30 -o body.out -w '%{http_code}' -X "$1" -H "Authorization: Bearer $PAPERCLIP_API_KEY" "$API$2"
  fi
}
expect() { # expect STATUS WHAT METHOD PATH [JSON]
  want=$1 what=$2; shift 2
  got=$(call "$@")
  if [ "$got" = "$want" ]; then ok "$what ($got)"; else bad "$what: got $got, want $want: $(head -c 300 body.out)"; fi
}
# The first "KEY":"value" in body.out.
json_field() { grep -o "\"$1\":\"[^\"]*\"" body.out | head -n 1 | cut -d '"' -f 4; }

if curl -sS -m 3 -o /dev/null "http://127.0.0.1:$HOST_PORT/api/health" 2>/dev/null; then
  bad "reached the host's Paperclip directly"
else
  ok "cannot reach the host's Paperclip at 127.0.0.1:$HOST_PORT directly"
fi
expect 200 "who am I" GET /api/agents/me
ME=$(json_field id)
[ -n "$ME" ] && ok "agent id $ME" || bad "no agent id in $(head -c 200 body.out)"
expect 200 "heartbeat context" GET "/api/issues/$ISSUE/heartbeat-context"
expect 200 "checkout" POST "/api/issues/$ISSUE/checkout" \
  "{\"agentId\":\"$ME\",\"expectedStatuses\":[\"todo\",\"backlog\",\"in_progress\"]}"
expect 201 "comment" POST "/api/issues/$ISSUE/comments" "{\"body\":\"$MARKER from the isolated sandbox\"}"
expect 200 "read comments" GET "/api/issues/$ISSUE/comments"
grep -q "$MARKER" body.out && ok "sees its own comment" || bad "comment not listed"
DOC_STATUS=$(call PUT "/api/issues/$ISSUE/documents/plan" \
  "{\"title\":\"Plan\",\"format\":\"markdown\",\"body\":\"# Plan\\n\\n$MARKER\"}")
case $DOC_STATUS in 200|201) ok "document written ($DOC_STATUS)";; *) bad "document write: $DOC_STATUS $(head -c 300 body.out)";; esac
expect 200 "document read" GET "/api/issues/$ISSUE/documents/plan"
grep -q "$MARKER" body.out && ok "document holds the marker" || bad "document lacks the marker"
expect 200 "status change" PATCH "/api/issues/$ISSUE" '{"status":"done"}'
expect 403 "denied: list companies" GET /api/companies
expect 403 "denied: delete the issue" DELETE "/api/issues/$ISSUE"

# A forged request written straight into the queue (no token, dot segments): the host
# must refuse it with 400 without forwarding.
FORGED=forged-$(date +%s)-$$
Q=$PAPERCLIP_BRIDGE_QUEUE_DIR
printf '{"id":"%s","method":"GET","path":"/api/companies/x/../../agents","query":"","headers":{},"body":"","createdAt":"2026-01-01T00:00:00.000Z"}\n' "$FORGED" > "$Q/requests/$FORGED.json.tmp"
mv "$Q/requests/$FORGED.json.tmp" "$Q/requests/$FORGED.json"
i=0
while [ ! -f "$Q/responses/$FORGED.json" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
if grep -q '"status":400' "$Q/responses/$FORGED.json" 2>/dev/null; then
  ok "forged dot-segment request refused with 400"
else
  bad "forged request: $(cat "$Q/responses/$FORGED.json" 2>&1)"
fi
rm -f "$Q/requests/$FORGED.json" "$Q/responses/$FORGED.json"

echo "CHECKPOINT $(pwd)"
sleep 3
exit $failed
