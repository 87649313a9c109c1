package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/quorumq/quorumq/cluster"
)

// queue update changes the settings it is given and keeps the others; ack,
// nack and extend take the receipts recv prints and settle those messages.
func TestCLIUpdateAndSettleVerbs(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	addr := strings.Join(tc.Addrs(), ",")
	stats := func() queueJSON {
		t.Helper()
		var q queueJSON
		if err := json.Unmarshal([]byte(mustRun(t, queueStatsCmd(), addr, "", "jobs", "--json")), &q); err != nil {
			t.Fatalf("queue stats --json: %v", err)
		}
		return q
	}

	mustRun(t, queueCreateCmd(), addr, "", "jobs", "--visibility", "5s", "--max-deliveries", "3")
	var q queueJSON
	out := mustRun(t, queueUpdateCmd(), addr, "", "jobs", "--visibility", "1m", "--dlq", "jobs-dead", "--create-dlq", "--json")
	if err := json.Unmarshal([]byte(out), &q); err != nil || q.VisibilityTimeout != "1m0s" || q.DeadLetterQueue != "jobs-dead" || q.MaxDeliveries != 3 {
		t.Fatalf("queue update --visibility 1m --dlq jobs-dead = %s (%v); want visibility 1m0s, dlq jobs-dead, max deliveries still 3", out, err)
	}
	if q := stats(); q.VisibilityTimeout != "1m0s" || q.DeadLetterQueue != "jobs-dead" {
		t.Fatalf("stats after update = %+v", q)
	}

	mustRun(t, sendCmd(), addr, "a\nb\nc\n", "jobs")
	var got []recvJSON
	if err := json.Unmarshal([]byte(mustRun(t, recvCmd(), addr, "", "jobs", "--max", "3", "--visibility", "2s", "--json")), &got); err != nil || len(got) != 3 {
		t.Fatalf("recv --json = %+v (%v); want 3 messages", got, err)
	}
	a, b, c := got[0].Receipt, got[1].Receipt, got[2].Receipt
	table := mustRun(t, recvCmd(), addr, "", "jobs", "--max", "3")
	if !strings.Contains(table, "no messages") {
		t.Fatalf("recv while all three are leased printed:\n%s", table)
	}

	if out := mustRun(t, ackCmd(), addr, "", "jobs", a); !strings.Contains(out, "acked 1 message") {
		t.Fatalf("ack %s printed %q", a, out)
	}
	// An ack of an acked message with the same receipt is a success.
	mustRun(t, ackCmd(), addr, "", "jobs", a)
	if out := mustRun(t, nackCmd(), addr, "", "jobs", b, "--delay", "1h"); !strings.Contains(out, "nacked 1 message") {
		t.Fatalf("nack %s printed %q", b, out)
	}
	if out := mustRun(t, extendCmd(), addr, "", "jobs", c, "--visibility", "1m"); !strings.Contains(out, "extended 1 lease") {
		t.Fatalf("extend %s printed %q", c, out)
	}
	// c was leased for 2 s: only the extension keeps it from coming back.
	time.Sleep(2500 * time.Millisecond)
	if q := stats(); q.AckedTotal != 1 || q.Delayed != 1 || q.Leased != 1 || q.Ready != 0 {
		t.Fatalf("stats after ack, nack --delay 1h, extend --visibility 1m = %+v; want 1 acked, 1 delayed, 1 leased, 0 ready", q)
	}

	// A nack without delay makes c available again at once; its old receipt
	// then loses the lease once c is delivered again.
	mustRun(t, nackCmd(), addr, "", "jobs", c)
	if err := json.Unmarshal([]byte(mustRun(t, recvCmd(), addr, "", "jobs", "--json")), &got); err != nil || len(got) != 1 || got[0].Body != "c" || got[0].Attempt != 2 {
		t.Fatalf("recv after nack = %+v (%v); want c, attempt 2", got, err)
	}
	if _, err := run(t, ackCmd(), addr, "", "jobs", c); err == nil || !strings.Contains(err.Error(), "lease lost") || !strings.Contains(err.Error(), c) {
		t.Fatalf("ack with the stale receipt %s = %v; want lease lost naming it", c, err)
	}
	mustRun(t, ackCmd(), addr, "", "jobs", got[0].Receipt, "--json")

	for _, bad := range []struct {
		name string
		err  func() error
		want string
	}{
		{"update without settings", func() error { _, err := run(t, queueUpdateCmd(), addr, "", "jobs"); return err }, "give at least one setting to change"},
		{"update of a missing queue", func() error { _, err := run(t, queueUpdateCmd(), addr, "", "nope", "--visibility", "1m"); return err }, "not found"},
		{"update over the limit", func() error { _, err := run(t, queueUpdateCmd(), addr, "", "jobs", "--visibility", "13h"); return err }, "12h0m0s"},
		{"update retention and keep-forever", func() error {
			_, err := run(t, queueUpdateCmd(), addr, "", "jobs", "--retention", "1h", "--keep-forever")
			return err
		}, "--retention and --keep-forever"},
		{"ack without receipts", func() error { _, err := run(t, ackCmd(), addr, "", "jobs"); return err }, "ack: want QUEUE and at least one RECEIPT (MESSAGE_ID/ATTEMPT, as recv prints it), got 1 argument(s)"},
		{"receipt without attempt", func() error { _, err := run(t, ackCmd(), addr, "", "jobs", "12"); return err }, `receipt "12": want MESSAGE_ID/ATTEMPT`},
		{"receipt with attempt 0", func() error { _, err := run(t, ackCmd(), addr, "", "jobs", "12/0"); return err }, `receipt "12/0": attempt must be a number from 1`},
		{"receipt with message 0", func() error { _, err := run(t, nackCmd(), addr, "", "jobs", "0/1"); return err }, `receipt "0/1": message ID must be a number from 1`},
		{"receipt not a number", func() error { _, err := run(t, extendCmd(), addr, "", "jobs", "x/1"); return err }, `receipt "x/1": message ID must be a number from 1`},
		{"nack delay over the limit", func() error { _, err := run(t, nackCmd(), addr, "", "jobs", "5/1", "--delay", "13h"); return err }, "Nack delay: must be 0..12h0m0s, got 13h0m0s"},
		{"extend negative", func() error {
			_, err := run(t, extendCmd(), addr, "", "jobs", "5/1", "--visibility", "-1s")
			return err
		}, "Extend visibility: must be 0..12h0m0s, got -1s"},
		{"bad queue", func() error { _, err := run(t, ackCmd(), addr, "", "a/b", "5/1"); return err }, `queue name "a/b" has byte '/'`},
	} {
		if err := bad.err(); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: %v; want an error naming %q", bad.name, err, bad.want)
		}
	}
}
