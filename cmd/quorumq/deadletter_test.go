package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/quorumq/quorumq/cluster"
)

// nack --reason gives a reason that the next delivery and the dead letter
// show in recv; a reason over the limit is refused.
func TestCLINackReasonAndDeadLetterOrigin(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	addr := strings.Join(tc.Addrs(), ",")
	mustRun(t, queueCreateCmd(), addr, "", "orders-dlq")
	mustRun(t, queueCreateCmd(), addr, "", "orders", "--max-deliveries", "2", "--dlq", "orders-dlq")
	mustRun(t, sendCmd(), addr, "order 42\n", "orders")

	recv := func(queue string) []recvJSON {
		t.Helper()
		var got []recvJSON
		if err := json.Unmarshal([]byte(mustRun(t, recvCmd(), addr, "", queue, "--json")), &got); err != nil {
			t.Fatalf("recv %s --json: %v", queue, err)
		}
		return got
	}
	first := recv("orders")
	mustRun(t, nackCmd(), addr, "", "orders", first[0].Receipt, "--reason", "card declined")
	second := recv("orders")
	if len(second) != 1 || second[0].LastNackReason != "card declined" {
		t.Fatalf("recv after nack --reason = %+v; want last_nack_reason card declined", second)
	}
	if _, err := run(t, nackCmd(), addr, "", "orders", second[0].Receipt, "--reason", strings.Repeat("x", 1025)); err == nil ||
		!strings.Contains(err.Error(), "1025 bytes, limit is 1024") {
		t.Fatalf("nack with a 1025-byte reason: %v; want refused naming the limit", err)
	}
	mustRun(t, nackCmd(), addr, "", "orders", second[0].Receipt)
	if got := recv("orders"); len(got) != 0 {
		t.Fatalf("third recv = %+v; want nothing, max deliveries is 2", got)
	}

	table := mustRun(t, recvCmd(), addr, "", "orders-dlq")
	for _, want := range []string{"DEAD_LETTER", "from orders/1 after 2 attempt(s): max_deliveries", "card declined"} {
		if !strings.Contains(table, want) {
			t.Fatalf("recv of the dead letter printed\n%s\nwant %q in it", table, want)
		}
	}
	mustRun(t, nackCmd(), addr, "", "orders-dlq", "1/1")
	dl := recv("orders-dlq")
	if len(dl) != 1 || dl[0].DeadLetter == nil {
		t.Fatalf("recv --json of the dead letter = %+v", dl)
	}
	if d := dl[0].DeadLetter; d.SourceQueue != "orders" || d.SourceMessageID != 1 || d.Reason != "max_deliveries" || d.Attempts != 2 ||
		d.LastNackReason != "card declined" || d.FirstEnqueuedAt == "" {
		t.Fatalf("dead letter = %+v", d)
	}
}

// reject QUEUE RECEIPT --reason dead-letters at once; a stale receipt is
// refused like a stale ack.
func TestCLIReject(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	addr := strings.Join(tc.Addrs(), ",")
	mustRun(t, queueCreateCmd(), addr, "", "jobs-dlq")
	mustRun(t, queueCreateCmd(), addr, "", "jobs", "--dlq", "jobs-dlq")
	mustRun(t, sendCmd(), addr, "poison\n", "jobs")
	var got []recvJSON
	if err := json.Unmarshal([]byte(mustRun(t, recvCmd(), addr, "", "jobs", "--json")), &got); err != nil || len(got) != 1 {
		t.Fatalf("recv: %+v %v", got, err)
	}
	mustRun(t, nackCmd(), addr, "", "jobs", got[0].Receipt)
	stale := got[0].Receipt
	if err := json.Unmarshal([]byte(mustRun(t, recvCmd(), addr, "", "jobs", "--json")), &got); err != nil || len(got) != 1 {
		t.Fatalf("recv: %+v %v", got, err)
	}
	if _, err := run(t, rejectCmd(), addr, "", "jobs", stale, "--reason", "bad"); err == nil || !strings.Contains(err.Error(), "lease lost") {
		t.Fatalf("reject with the stale receipt %s: %v; want lease lost", stale, err)
	}
	if out := mustRun(t, rejectCmd(), addr, "", "jobs", got[0].Receipt, "--reason", "unknown schema"); !strings.Contains(out, "rejected 1 message") {
		t.Fatalf("reject printed %q", out)
	}
	table := mustRun(t, recvCmd(), addr, "", "jobs-dlq")
	for _, want := range []string{"poison", "from jobs/1 after 2 attempt(s): rejected", `rejected: "unknown schema"`} {
		if !strings.Contains(table, want) {
			t.Fatalf("recv of the rejected message printed\n%s\nwant %q in it", table, want)
		}
	}
}

// queue create and update refuse a DLQ that does not exist unless
// --create-dlq; queue delete refuses a DLQ in use unless --force, and a
// dead letter with nowhere to go then shows as dead in queue stats.
func TestCLIDeadLetterQueueMustExist(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	addr := strings.Join(tc.Addrs(), ",")
	if _, err := run(t, queueCreateCmd(), addr, "", "orders", "--dlq", "orders-dlx"); err == nil || !strings.Contains(err.Error(), `queue "orders-dlx" does not exist`) {
		t.Fatalf("queue create --dlq orders-dlx: %v; want refused naming the missing DLQ", err)
	}
	mustRun(t, queueCreateCmd(), addr, "", "orders", "--dlq", "orders-dlq", "--create-dlq", "--max-deliveries", "1")
	mustRun(t, queueStatsCmd(), addr, "", "orders-dlq")
	if _, err := run(t, queueUpdateCmd(), addr, "", "orders", "--dlq", "nope"); err == nil || !strings.Contains(err.Error(), `queue "nope" does not exist`) {
		t.Fatalf("queue update --dlq nope: %v; want refused", err)
	}
	if _, err := run(t, queueDeleteCmd(), addr, "", "orders-dlq"); err == nil || !strings.Contains(err.Error(), `is the dead-letter queue of "orders"`) {
		t.Fatalf("queue delete orders-dlq: %v; want refused naming orders", err)
	}
	mustRun(t, queueDeleteCmd(), addr, "", "orders-dlq", "--force")
	mustRun(t, sendCmd(), addr, "poison\n", "orders")
	var got []recvJSON
	if err := json.Unmarshal([]byte(mustRun(t, recvCmd(), addr, "", "orders", "--json")), &got); err != nil || len(got) != 1 {
		t.Fatalf("recv: %+v %v", got, err)
	}
	mustRun(t, nackCmd(), addr, "", "orders", got[0].Receipt)
	if err := json.Unmarshal([]byte(mustRun(t, recvCmd(), addr, "", "orders", "--json")), &got); err != nil || len(got) != 0 {
		t.Fatalf("recv after max deliveries: %+v %v; want nothing", got, err)
	}
	var q queueJSON
	if err := json.Unmarshal([]byte(mustRun(t, queueStatsCmd(), addr, "", "orders", "--json")), &q); err != nil || q.Dead != 1 {
		t.Fatalf("queue stats --json = %+v (%v); want dead 1", q, err)
	}
	if out := mustRun(t, queueStatsCmd(), addr, "", "orders"); !strings.Contains(out, "dead ") {
		t.Fatalf("queue stats printed\n%s\nwant a dead row", out)
	}
}

// dlq redrive puts dead letters back where they came from, or --to a
// named queue, at most --max.
func TestCLIRedrive(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	addr := strings.Join(tc.Addrs(), ",")
	mustRun(t, queueCreateCmd(), addr, "", "orders", "--dlq", "orders-dlq", "--create-dlq")
	mustRun(t, queueCreateCmd(), addr, "", "retry")
	mustRun(t, sendCmd(), addr, "a\nb\nc\n", "orders")
	var got []recvJSON
	if err := json.Unmarshal([]byte(mustRun(t, recvCmd(), addr, "", "orders", "--max", "3", "--json")), &got); err != nil || len(got) != 3 {
		t.Fatalf("recv: %+v %v", got, err)
	}
	mustRun(t, rejectCmd(), addr, "", append([]string{"orders"}, got[0].Receipt, got[1].Receipt, got[2].Receipt)...)
	if out := mustRun(t, dlqRedriveCmd(), addr, "", "orders-dlq", "--max", "2"); !strings.Contains(out, "moved 2 message(s) from orders-dlq") {
		t.Fatalf("dlq redrive --max 2 printed %q", out)
	}
	if out := mustRun(t, dlqRedriveCmd(), addr, "", "orders-dlq", "--to", "retry"); !strings.Contains(out, "moved 1 message(s) from orders-dlq to retry") {
		t.Fatalf("dlq redrive --to retry printed %q", out)
	}
	if err := json.Unmarshal([]byte(mustRun(t, recvCmd(), addr, "", "orders", "--max", "3", "--json")), &got); err != nil || len(got) != 2 || got[0].Body != "a" || got[0].DeadLetter != nil {
		t.Fatalf("orders after redrive: %+v %v; want a and b back", got, err)
	}
	if err := json.Unmarshal([]byte(mustRun(t, recvCmd(), addr, "", "retry", "--json")), &got); err != nil || len(got) != 1 || got[0].Body != "c" {
		t.Fatalf("retry after redrive: %+v %v; want c", got, err)
	}
	var q queueJSON
	if err := json.Unmarshal([]byte(mustRun(t, queueStatsCmd(), addr, "", "orders-dlq", "--json")), &q); err != nil || q.RedrivenTotal != 3 {
		t.Fatalf("queue stats orders-dlq = %+v (%v); want redriven_total 3", q, err)
	}
}
