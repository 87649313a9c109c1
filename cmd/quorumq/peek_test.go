package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/cluster"
)

// peek shows a queue's messages with their state, attempts and nack
// reason, pages by --from, filters by --state, leaves bodies out with
// --no-body, refuses a --max over the limit, and leases nothing.
func TestCLIPeek(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	addr := strings.Join(tc.Addrs(), ",")
	mustRun(t, queueCreateCmd(), addr, "", "orders")
	mustRun(t, sendCmd(), addr, "order 1\norder 2\norder 3\n", "orders")
	var got []recvJSON
	if err := json.Unmarshal([]byte(mustRun(t, recvCmd(), addr, "", "orders", "--json")), &got); err != nil || len(got) != 1 {
		t.Fatalf("recv: %+v %v", got, err)
	}
	mustRun(t, nackCmd(), addr, "", "orders", got[0].Receipt, "--reason", "card declined")
	mustRun(t, recvCmd(), addr, "", "orders") // order 1 leased again, attempt 2
	// The oldest ready message ages with time, peeks or not: left out.
	statsNow := func() queueJSON {
		t.Helper()
		var q queueJSON
		if err := json.Unmarshal([]byte(mustRun(t, queueStatsCmd(), addr, "", "orders", "--json")), &q); err != nil {
			t.Fatal(err)
		}
		q.OldestReadyAge = ""
		return q
	}
	stats := statsNow()

	peek := func(args ...string) peekJSON {
		t.Helper()
		var p peekJSON
		if err := json.Unmarshal([]byte(mustRun(t, peekCmd(), addr, "", append([]string{"orders", "--json"}, args...)...)), &p); err != nil {
			t.Fatalf("peek %v --json: %v", args, err)
		}
		return p
	}
	all := peek()
	if len(all.Messages) != 3 || all.NextID != 0 {
		t.Fatalf("peek = %+v; want 3 messages, no next page", all)
	}
	if m := all.Messages[0]; m.ID != 1 || m.State != "leased" || m.Attempts != 2 || m.Body != "order 1" || m.LastNackReason != "card declined" || m.Until == "" {
		t.Errorf("first message = %+v; want id 1 leased after 2 attempts, nacked with card declined", m)
	}
	if m := all.Messages[1]; m.State != "ready" || m.Attempts != 0 || m.BodySize != 7 {
		t.Errorf("second message = %+v; want ready, never delivered, 7 bytes", m)
	}
	first := peek("--max", "2", "--no-body")
	if len(first.Messages) != 2 || first.NextID != 3 || first.Messages[0].Body != "" || first.Messages[0].BodySize != 7 {
		t.Fatalf("peek --max 2 --no-body = %+v; want ids 1, 2 without bodies, next 3", first)
	}
	if rest := peek("--from", "3", "--max", "2"); len(rest.Messages) != 1 || rest.Messages[0].ID != 3 || rest.NextID != 0 {
		t.Errorf("peek --from 3 = %+v; want id 3 only", rest)
	}
	if ready := peek("--state", "ready"); len(ready.Messages) != 2 || ready.Messages[0].ID != 2 {
		t.Errorf("peek --state ready = %+v; want ids 2, 3", ready)
	}
	text := mustRun(t, peekCmd(), addr, "", "orders", "--state", "leased")
	for _, want := range []string{"ID", "STATE", "HOLDER", client.DefaultConsumerName(), "leased", "order 1", "card declined"} {
		if !strings.Contains(text, want) {
			t.Errorf("peek --state leased printed\n%s\nwant %q in it", text, want)
		}
	}
	if _, err := run(t, peekCmd(), addr, "", "orders", "--max", "101"); err == nil || !strings.Contains(err.Error(), "max: 101, limit is 1 to 100") {
		t.Errorf("peek --max 101: %v; want refused naming the limit", err)
	}
	if _, err := run(t, peekCmd(), addr, "", "orders", "--state", "gone"); err == nil || !strings.Contains(err.Error(), `"gone"`) {
		t.Errorf("peek --state gone: %v; want refused naming the state", err)
	}
	if after := statsNow(); after != stats {
		t.Errorf("peek changed the queue's stats:\nbefore %+v\nafter  %+v", stats, after)
	}
}
