package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/quorumq/quorumq/cluster"
)

// run executes a fresh CLI verb against addr and returns its stdout.
func run(t *testing.T, cmd *cobra.Command, addr, stdin string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd.SetArgs(append(args, "--addr", addr, "--timeout", "20s"))
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetOut(&out)
	cmd.SetErr(&bytes.Buffer{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

func mustRun(t *testing.T, cmd *cobra.Command, addr, stdin string, args ...string) string {
	t.Helper()
	out, err := run(t, cmd, addr, stdin, args...)
	if err != nil {
		t.Fatalf("%s %v: %v", cmd.Name(), args, err)
	}
	return out
}

func TestCLIWalkThrough(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	addr := strings.Join(tc.Addrs(), ",")

	out := mustRun(t, queueCreateCmd(), addr, "", "jobs", "--visibility", "5s", "--max-deliveries", "3", "--json")
	var q queueJSON
	if err := json.Unmarshal([]byte(out), &q); err != nil || q.Name != "jobs" || q.VisibilityTimeout != "5s" || q.MaxDeliveries != 3 {
		t.Fatalf("queue create --json = %s (%v)", out, err)
	}
	if _, err := run(t, queueCreateCmd(), addr, "", "jobs"); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("creating an existing queue = %v; want a queue-exists error", err)
	}

	mustRun(t, sendCmd(), addr, "", "jobs", "first", "--dedup-id", "d-1", "--attr", "k=v")
	lines := "a\nb\nc\n"
	mustRun(t, sendCmd(), addr, lines, "jobs", "--dedup-prefix", "batch-")
	// Re-running both sends with the same IDs enqueues nothing.
	var one sendJSON
	if err := json.Unmarshal([]byte(mustRun(t, sendCmd(), addr, "", "jobs", "first", "--dedup-id", "d-1", "--json")), &one); err != nil || !one.Duplicate {
		t.Fatalf("re-send of d-1 = %+v (%v); want duplicate", one, err)
	}
	rerun := mustRun(t, sendCmd(), addr, lines, "jobs", "--dedup-prefix", "batch-", "--json")
	if strings.Count(rerun, `"duplicate":true`) != 3 {
		t.Fatalf("re-run of the stdin send:\n%s\nwant 3 duplicates", rerun)
	}

	var got []recvJSON
	out = mustRun(t, recvCmd(), addr, "", "jobs", "--max", "10", "--ack", "--json")
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("recv --json = %s (%v)", out, err)
	}
	var bodies []string
	for _, m := range got {
		bodies = append(bodies, m.Body)
	}
	if strings.Join(bodies, ",") != "first,a,b,c" || got[0].Attributes["k"] != "v" {
		t.Fatalf("received %v with attributes %v; want first,a,b,c in order, k=v", bodies, got[0].Attributes)
	}
	if out := mustRun(t, recvCmd(), addr, "", "jobs", "--max", "10"); !strings.Contains(out, "no messages") {
		t.Fatalf("recv after --ack printed %q; want no messages", out)
	}

	if err := json.Unmarshal([]byte(mustRun(t, queueStatsCmd(), addr, "", "jobs", "--json")), &q); err != nil ||
		q.AckedTotal != 4 || q.EnqueuedTotal != 4 || q.DedupHitsTotal != 4 {
		t.Fatalf("queue stats = %+v (%v); want 4 enqueued, 4 acked, 4 dedup hits", q, err)
	}
	table := mustRun(t, queueListCmd(), addr, "")
	if !strings.Contains(table, "QUEUE") || !strings.Contains(table, "jobs") {
		t.Fatalf("queue list table:\n%s", table)
	}

	var st statusJSON
	if err := json.Unmarshal([]byte(mustRun(t, statusCmd(), addr, "", "--json")), &st); err != nil ||
		len(st.Nodes) != 3 || st.LeaderID == "" || len(st.Queues) != 1 {
		t.Fatalf("status --json = %+v (%v); want 3 nodes, a leader, 1 queue", st, err)
	}
	for _, n := range st.Nodes {
		// The leader always reads its own clock; the others' need a ping
		// round first, so only the leader's offset is certain here.
		if n.GossipState != "alive" || (n.ID == st.LeaderID && n.ClockOffset == "") {
			t.Fatalf("status --json node %+v; want gossip state alive, and a clock offset on the leader", n)
		}
	}
	if out := mustRun(t, statusCmd(), addr, ""); !strings.Contains(out, "GOSSIP") || !strings.Contains(out, "CLOCK_OFFSET") || !strings.Contains(out, "LOG_CHECK") || !strings.Contains(out, "ok/") {
		t.Fatalf("status table:\n%s\nwant GOSSIP, CLOCK_OFFSET and LOG_CHECK columns, the log check ok", out)
	}

	mustRun(t, sendCmd(), addr, "", "jobs", "to-purge")
	if out := mustRun(t, queuePurgeCmd(), addr, "", "jobs"); !strings.Contains(out, "purged 1 message") {
		t.Fatalf("purge printed %q", out)
	}
	mustRun(t, queueDeleteCmd(), addr, "", "jobs")
	if _, err := run(t, queueStatsCmd(), addr, "", "jobs"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("stats of a deleted queue = %v; want not found", err)
	}

	for _, bad := range []struct {
		cmd  *cobra.Command
		args []string
		want string
	}{
		{recvCmd(), []string{"jobs", "--ack", "--auto-ack"}, "--ack and --auto-ack"},
		{recvCmd(), []string{"jobs", "--wait", "30s"}, "--wait"},
		{sendCmd(), []string{"jobs", "--attr", "novalue"}, "--attr"},
		{sendCmd(), []string{"jobs", "--dedup-id", "x"}, "--dedup-prefix"},
		{sendCmd(), []string{"bad/name", "x"}, "queue name"},
		{queueCreateCmd(), []string{"q", "--retention", "1h", "--keep-forever"}, "--retention"},
	} {
		if _, err := run(t, bad.cmd, addr, "", bad.args...); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s %v = %v; want an error naming %q", bad.cmd.Name(), bad.args, err, bad.want)
		}
	}
}

// bench --queue drains an existing queue with its consumers, ends when a
// receive finds it empty, and keeps the queue; it refuses flags that
// would fill or replace it.
func TestBenchDrainsAnExistingQueue(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	addr := strings.Join(tc.Addrs(), ",")
	mustRun(t, queueCreateCmd(), addr, "", "backlog")
	const n = 600
	lines := strings.Repeat("x\n", n) // bodies shorter than a send time
	mustRun(t, sendCmd(), addr, lines, "backlog")

	var res benchResult
	out := mustRun(t, rootCmd, addr, "", "bench", "--queue", "backlog", "--producers", "0", "--consumers", "4", "--batch", "50", "--duration", "20s", "--json")
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("bench --json = %s (%v)", out, err)
	}
	if res.Acked != n || res.AckErrors != 0 || res.Elapsed >= 20 {
		t.Fatalf("bench --queue acked %d (%d errors) in %.1f s, want %d before --duration ran out", res.Acked, res.AckErrors, res.Elapsed, n)
	}
	var q queueJSON
	if err := json.Unmarshal([]byte(mustRun(t, queueStatsCmd(), addr, "", "backlog", "--json")), &q); err != nil || q.Name != "backlog" || q.Ready != 0 || q.Leased != 0 || q.AckedTotal != n {
		t.Fatalf("after the drain the queue is %+v (%v), want it kept and empty", q, err)
	}
	for _, args := range [][]string{
		{"--queue", "backlog", "--queues", "2"},
		{"--queue", "backlog", "--prefill", "10"},
		{"--queue", "missing", "--producers", "0", "--consumers", "1"},
	} {
		if _, err := run(t, rootCmd, addr, "", append([]string{"bench"}, args...)...); err == nil {
			t.Fatalf("bench %v: no error", args)
		}
	}
}
