package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/quorumq/quorumq/cluster"
)

// get follows a message by its dedup ID from its queue through the DLQ
// (rejected) and back (redriven), one line per hop with the Raft index
// that last changed it; a dedup ID never sent is unknown; --id and
// --dedup-id together, or neither, are refused; recv --consumer names
// the holder; queue stats show the oldest ready age; dlq redrive takes
// --rate and refuses a negative one.
func TestCLIGet(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	addr := strings.Join(tc.Addrs(), ",")
	mustRun(t, queueCreateCmd(), addr, "", "orders", "--dlq", "orders-dlq", "--create-dlq")
	mustRun(t, sendCmd(), addr, "", "orders", "order 42", "--dedup-id", "order-42")
	var got []recvJSON
	if err := json.Unmarshal([]byte(mustRun(t, recvCmd(), addr, "", "orders", "--json", "--consumer", "billing-1")), &got); err != nil || len(got) != 1 {
		t.Fatalf("recv: %+v %v", got, err)
	}
	leased := mustRun(t, getCmd(), addr, "", "orders", "--dedup-id", "order-42", "--leader")
	if !strings.Contains(leased, "orders/1 (dedup ID order-42): leased until") || !strings.Contains(leased, "by billing-1, attempt 1") {
		t.Errorf("get of a leased message printed %q", leased)
	}
	mustRun(t, rejectCmd(), addr, "", "orders", got[0].Receipt, "--reason", "bad total")
	mustRun(t, dlqRedriveCmd(), addr, "", "orders-dlq", "--rate", "100")

	var hops []fateJSON
	if err := json.Unmarshal([]byte(mustRun(t, getCmd(), addr, "", "orders", "--dedup-id", "order-42", "--leader", "--json")), &hops); err != nil {
		t.Fatal(err)
	}
	want := []struct {
		queue, state, movedTo string
		id                    uint64
	}{{"orders", "dead-lettered", "orders-dlq", 1}, {"orders-dlq", "redriven", "orders", 1}, {"orders", "ready", "", 2}}
	if len(hops) != len(want) {
		t.Fatalf("get --json = %+v; want %d hops", hops, len(want))
	}
	for i, w := range want {
		if h := hops[i]; h.Queue != w.queue || h.State != w.state || h.MovedTo != w.movedTo || h.ChangedIndex == 0 || (i < 2 && h.MovedToID == 0) || (i == 2 && h.ID != w.id) {
			t.Errorf("hop %d = %+v; want %s %s to %q", i, h, w.queue, w.state, w.movedTo)
		}
	}
	if !hops[0].Rejected {
		t.Errorf("first hop = %+v; want rejected", hops[0])
	}
	text := mustRun(t, getCmd(), addr, "", "orders", "--dedup-id", "order-42")
	for _, w := range []string{"dead-lettered (rejected)", "to orders-dlq as id 1", "redriven", "to orders as id 2", "orders/2", "ready", "changed at raft index"} {
		if !strings.Contains(text, w) {
			t.Errorf("get printed\n%s\nwant %q in it", text, w)
		}
	}
	if !strings.Contains(text, "may lag the leader; --leader for the leader's view") {
		t.Errorf("get without --leader printed\n%s\nwant it to say it may be stale", text)
	}
	if strings.Contains(leased, "may lag") {
		t.Errorf("get --leader printed\n%s\nwant no staleness note", leased)
	}
	if out := mustRun(t, getCmd(), addr, "", "orders", "--dedup-id", "never-sent"); !strings.Contains(out, "unknown") {
		t.Errorf("get of a dedup ID never sent printed %q", out)
	}
	for _, args := range [][]string{{"orders"}, {"orders", "--id", "1", "--dedup-id", "x"}} {
		if _, err := run(t, getCmd(), addr, "", args...); err == nil || !strings.Contains(err.Error(), "give an id or a dedup ID") {
			t.Errorf("get %v: %v; want refused", args, err)
		}
	}
	if _, err := run(t, recvCmd(), addr, "", "orders", "--consumer", "a\tb"); err == nil || !strings.Contains(err.Error(), "--consumer: consumer has control byte") {
		t.Errorf("recv --consumer with a tab: %v; want refused", err)
	}
	if _, err := run(t, dlqRedriveCmd(), addr, "", "orders-dlq", "--rate", "-1"); err == nil || !strings.Contains(err.Error(), "--rate -1: want messages per second >= 0") {
		t.Errorf("dlq redrive --rate -1: %v; want refused", err)
	}
	var q queueJSON
	if err := json.Unmarshal([]byte(mustRun(t, queueStatsCmd(), addr, "", "orders", "--json")), &q); err != nil || q.OldestReadyAge == "" || q.OldestReadyAge == "0s" {
		t.Errorf("queue stats: %+v %v; want an oldest ready age", q, err)
	}
}
