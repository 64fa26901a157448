#!/bin/sh
# The agent Paperclip itself starts, through `paperclip-bridge run`, for a heartbeat run.
# It runs inside the network-isolated sandbox with only the bridge variables, finds its
# issue (the one whose title holds MARKER) in its inbox, checks it out, comments, writes a
# document and sets the issue to done.
set -u
MARKER=$1
API=$PAPERCLIP_API_URL
failed=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; failed=1; }
call() {
  if [ $# -ge 3 ]; then
    curl -sS -m 30 -o body.out -w '%{http_code}' -X "$1" -H "Authorization: Bearer $PAPERCLIP_API_KEY" \
      -H 'Content-Type: application/json' --data "$3" "$API$2"
  else
    curl -sS -m 30 -o body.out -w '%{http_code}' -X "$1" -H "Authorization: Bearer $PAPERCLIP_API_KEY" "$API$2"
  fi
}
expect() {
  want=$1 what=$2; shift 2
  got=$(call "$@")
  case " $want " in *" $got "*) ok "$what ($got)";; *) bad "$what: got $got: $(head -c 300 body.out)";; esac
}
first() { grep -o "\"$1\":\"[^\"]*\"" | head -n 1 | cut -d '"' -f 4; }

echo "token-sha256 $(printf '%s' "$PAPERCLIP_API_KEY" | sha256sum | cut -d ' ' -f 1)"
if env | grep -q 'eyJ'; then bad "a JWT is in the sandbox environment"; else ok "no JWT in the environment"; fi
expect 200 "who am I" GET /api/agents/me
ME=$(first id < body.out)
expect 200 "inbox" GET /api/agents/me/inbox-lite
ISSUE=$(tr '{' '\n' < body.out | grep "\"title\":\"[^\"]*$MARKER" | first id)
[ -n "$ISSUE" ] && ok "found issue $ISSUE in the inbox" || { bad "no issue titled $MARKER in the inbox"; exit 1; }
expect 200 "checkout" POST "/api/issues/$ISSUE/checkout" \
  "{\"agentId\":\"$ME\",\"expectedStatuses\":[\"todo\",\"backlog\",\"in_progress\"]}"
expect 201 "comment" POST "/api/issues/$ISSUE/comments" "{\"body\":\"$MARKER done from the sandbox\"}"
expect "200 201" "document" PUT "/api/issues/$ISSUE/documents/report" \
  "{\"title\":\"Report\",\"format\":\"markdown\",\"body\":\"$MARKER report\"}"
expect 200 "done" PATCH "/api/issues/$ISSUE" '{"status":"done"}'
exit $failed
