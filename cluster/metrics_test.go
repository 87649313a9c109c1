package cluster

import (
	"bufio"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// scrape fetches addr's /metrics and returns every sample as
// "name{labels}" → value.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestMetricsMoveWithTraffic(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) { cfg.AdminAddr = "127.0.0.1:0" })
	leader := c.Leader(t)
	li := c.Index(leader)
	before := scrape(t, leader.AdminAddr())

	enqueue(t, c, li, "m", "a", "b", "c")
	q0 := quorumqpb.NewQueueClient(c.Conn(t, li))
	if _, err := q0.Enqueue(ctxT(t, 10*time.Second), &quorumqpb.EnqueueRequest{Queue: "g", Messages: []*fsmpb.Message{
		{Body: []byte("1"), Group: "x"}, {Body: []byte("2"), Group: "x"}, {Body: []byte("3"), Group: "y"}}}); err != nil {
		t.Fatal(err)
	}
	// The same dedup IDs again: three dedup hits, nothing enqueued.
	enqueue(t, c, li, "m", "a", "b", "c")
	q := quorumqpb.NewQueueClient(c.Conn(t, li))
	rcv, err := q.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: "m", Max: 2, VisibilityNs: int64(time.Minute)})
	if err != nil || len(rcv.GetDeliveries()) != 2 {
		t.Fatalf("receive: %v, %d deliveries", err, len(rcv.GetDeliveries()))
	}
	d := rcv.GetDeliveries()
	if _, err := q.Ack(ctxT(t, 10*time.Second), &quorumqpb.AckRequest{Queue: "m", Receipts: []*fsmpb.Receipt{d[0].GetReceipt()}}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Nack(ctxT(t, 10*time.Second), &quorumqpb.NackRequest{Queue: "m", Receipts: []*fsmpb.Receipt{d[1].GetReceipt()}}); err != nil {
		t.Fatal(err)
	}
	// The nacked message comes again: a redelivery.
	if r, err := q.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: "m", Max: 2, VisibilityNs: int64(time.Minute)}); err != nil || len(r.GetDeliveries()) != 2 {
		t.Fatalf("second receive: %v, %d deliveries", err, len(r.GetDeliveries()))
	}
	if _, err := q.GetQueue(ctxT(t, 10*time.Second), &quorumqpb.GetQueueRequest{Name: "nope"}); err == nil {
		t.Fatal("GetQueue of a missing queue succeeded")
	}
	// A batch chained behind a message that is not there: refused.
	if _, err := q.Enqueue(ctxT(t, 10*time.Second), &quorumqpb.EnqueueRequest{Queue: "m", AfterDedupId: "missing",
		Messages: []*fsmpb.Message{{Body: []byte("x")}}}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("enqueue behind a missing message: %v, want FailedPrecondition", err)
	}

	after := scrape(t, leader.AdminAddr())
	want := map[string]float64{
		`quorumq_queue_messages{queue="m",state="ready"}`:                             0,
		`quorumq_queue_messages{queue="m",state="leased"}`:                            2,
		`quorumq_queue_messages{queue="m",state="delayed"}`:                           0,
		`quorumq_queue_messages{queue="m",state="dead_lettered"}`:                     0,
		`quorumq_queue_messages{queue="m",state="dead"}`:                              0,
		`quorumq_queue_messages{queue="g",state="ready"}`:                             2,
		`quorumq_queue_messages{queue="g",state="waiting"}`:                           1,
		`quorumq_queue_groups{queue="g"}`:                                             2,
		`quorumq_queue_enqueued_total{queue="m"}`:                                     3,
		`quorumq_queue_dedup_hits_total{queue="m"}`:                                   3,
		`quorumq_queue_delivered_total{queue="m"}`:                                    4,
		`quorumq_queue_acked_total{queue="m"}`:                                        1,
		`quorumq_queue_redriven_total{queue="m"}`:                                     0,
		`quorumq_queue_redelivered_total{queue="m"}`:                                  1,
		`quorumq_queue_expired_total{queue="m"}`:                                      0,
		`quorumq_messages_nacked_total{queue="m"}`:                                    1,
		`quorumq_raft_state{state="leader"}`:                                          1,
		`quorumq_leader_ready`:                                                        1,
		`quorumq_rpc_duration_seconds_count{code="OK",method="Queue/Enqueue"}`:        3,
		`quorumq_rpc_duration_seconds_count{code="OK",method="Queue/Receive"}`:        2,
		`quorumq_rpc_duration_seconds_count{code="NotFound",method="Queue/GetQueue"}`: 1,
		`quorumq_command_refusals_total{code="OUT_OF_ORDER"}`:                         1,
	}
	for k, v := range want {
		if got, ok := after[k]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	// Series that grow with traffic, whatever their exact values.
	for _, k := range []string{
		"quorumq_raft_commit_index", "quorumq_raft_applied_index", "quorumq_raft_last_log_index",
		"quorumq_raft_apply_duration_seconds_count", "quorumq_wal_log_appends_total",
		"quorumq_wal_log_entries_written_total", "quorumq_wal_log_entry_bytes_written_total",
		"quorumq_wal_fsync_duration_seconds_count",
	} {
		if after[k] <= before[k] {
			t.Errorf("%s did not grow with traffic: %v → %v", k, before[k], after[k])
		}
	}
	for _, k := range []string{"quorumq_raft_term", "quorumq_raft_leader_changes_total"} {
		if after[k] < 1 {
			t.Errorf("%s = %v, want >= 1", k, after[k])
		}
	}
	// The bolt series are absent on a wal node (TestBoltNodeMetrics for
	// the reverse).
	for k := range after {
		if strings.HasPrefix(k, "quorumq_bolt_") {
			t.Errorf("wal node reports %s", k)
		}
	}

	// A snapshot taken on request shows up in the snapshot series.
	if _, err := quorumqpb.NewClusterClient(c.Conn(t, li)).Snapshot(ctxT(t, 10*time.Second), &quorumqpb.SnapshotRequest{}); err != nil {
		t.Fatal(err)
	}
	snap := scrape(t, leader.AdminAddr())
	if snap["quorumq_raft_snapshot_persist_seconds_count"] != 1 || snap["quorumq_raft_snapshot_size_bytes"] <= 0 || snap["quorumq_raft_last_snapshot_index"] <= 0 {
		t.Errorf("after a snapshot: persist count %v, size %v, index %v; want 1, > 0, > 0",
			snap["quorumq_raft_snapshot_persist_seconds_count"], snap["quorumq_raft_snapshot_size_bytes"], snap["quorumq_raft_last_snapshot_index"])
	}

	// A follower reports the replicated queue too.
	c.WaitReplicated(t)
	for _, n := range c.Live() {
		if n == leader {
			continue
		}
		fm := scrape(t, n.AdminAddr())
		if fm[`quorumq_queue_enqueued_total{queue="m"}`] != 3 || fm[`quorumq_raft_state{state="follower"}`] != 1 {
			t.Errorf("follower %s: enqueued %v, follower state %v; want 3 and 1", n.ID(), fm[`quorumq_queue_enqueued_total{queue="m"}`], fm[`quorumq_raft_state{state="follower"}`])
		}
	}
}

// TestBoltNodeMetrics: a node on raft-boltdb reports bolt's series and
// none of the wal's.
func TestBoltNodeMetrics(t *testing.T) {
	c := StartTestClusterWith(t, 1, func(_ int, cfg *Config) {
		cfg.AdminAddr = "127.0.0.1:0"
		cfg.LogStore = LogStoreBolt
	})
	leader := c.Leader(t)
	before := scrape(t, leader.AdminAddr())
	enqueue(t, c, 0, "m", "a", "b", "c")
	after := scrape(t, leader.AdminAddr())
	if after["quorumq_bolt_writes_total"] <= before["quorumq_bolt_writes_total"] {
		t.Errorf("quorumq_bolt_writes_total did not grow with traffic: %v → %v", before["quorumq_bolt_writes_total"], after["quorumq_bolt_writes_total"])
	}
	if after["quorumq_bolt_file_bytes"] < 1 {
		t.Errorf("quorumq_bolt_file_bytes = %v, want >= 1", after["quorumq_bolt_file_bytes"])
	}
	for k := range after {
		if strings.HasPrefix(k, "quorumq_wal_") {
			t.Errorf("bolt node reports %s", k)
		}
	}
}

func TestHealthAndReadiness(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) { cfg.AdminAddr = "127.0.0.1:0" })
	c.Leader(t)
	for _, n := range c.Live() {
		if code, body := httpGet(t, "http://"+n.AdminAddr()+"/healthz"); code != http.StatusOK {
			t.Errorf("%s /healthz: %d %s", n.ID(), code, body)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			code, body := httpGet(t, "http://"+n.AdminAddr()+"/readyz")
			if code == http.StatusOK {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s /readyz: %d %s", n.ID(), code, body)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// Two of three nodes gone: the last one loses its leader and is not
	// ready, but it is alive.
	c.Kill(0)
	c.Kill(1)
	last := c.Nodes[2]
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, body := httpGet(t, "http://"+last.AdminAddr()+"/readyz")
		if code == http.StatusServiceUnavailable && strings.Contains(body, "no leader") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz without a quorum: %d %q, want 503 naming the missing leader", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, _ := httpGet(t, "http://"+last.AdminAddr()+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz without a quorum: %d, want 200 (the process is alive)", code)
	}
}
