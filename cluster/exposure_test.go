package cluster

import (
	"fmt"
	"io"
	"net"
	rtmetrics "runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"

	"github.com/quorumq/quorumq/transport/raftnet"
)

// A host that opens thousands of connections to a node's Raft port and
// sends nothing holds at most MaxConnsPerIP of them, each only until the
// handshake timeout, and the cluster keeps taking writes meanwhile. This
// cluster's Raft port has no TLS, so a host that is no server's is refused
// at accept before the cap is reached ("not-a-peer"); either way, every
// connection beyond the cap is closed at once.
func TestIdleRaftConnectionsAreCappedAndClosed(t *testing.T) {
	const attackers = 5000
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) {
		cfg.RaftConnLimits = raftnet.Limits{HandshakeTimeout: 3 * time.Second}
	})
	leader := c.Leader(t)
	li := c.Index(leader)

	// 127.0.0.2 plays a host outside the cluster (the nodes use 127.0.0.1).
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}
	conns := make([]net.Conn, 0, attackers)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	start := time.Now()
	for i := range attackers {
		conn, err := d.Dial("tcp", leader.RaftAddr())
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, conn)
	}
	t.Logf("%d idle connections opened in %v", attackers, time.Since(start).Round(time.Millisecond))

	for i := range 20 {
		enqueue(t, c, li, "q", fmt.Sprintf("m%d", i))
	}

	deadline := time.Now().Add(3*time.Second + 10*time.Second)
	open := 0
	for _, conn := range conns {
		conn.SetReadDeadline(deadline)
		if _, err := io.ReadAll(conn); err != nil {
			open++
		}
	}
	if open > 0 {
		t.Fatalf("%d of %d idle connections still open %v after they were made (handshake timeout 3 s)",
			open, attackers, time.Since(start).Round(time.Millisecond))
	}
	refused := testutil.ToFloat64(leader.metrics.raftConnsRefused.WithLabelValues("max-conns-per-ip")) +
		testutil.ToFloat64(leader.metrics.raftConnsRefused.WithLabelValues("not-a-peer"))
	if want := float64(attackers - raftnet.DefaultMaxConnsPerIP); refused < want {
		t.Fatalf("quorumq_raft_connections_refused_total{reason=max-conns-per-ip or not-a-peer} = %v, want at least %v", refused, want)
	}
	enqueue(t, c, li, "q", "after")
	c.WaitReplicated(t)
}

// rawCodec sends a request's wire bytes as they are, so a test can send
// what no protobuf library would build.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}
func (rawCodec) Unmarshal(mem.BufferSlice, any) error { return nil }
func (rawCodec) Name() string                         { return "proto" }

// emptyElements is an EnqueueRequest for queue "jobs" whose messages field
// repeats an empty element until the request is size bytes: two bytes on
// the wire each, a whole fsmpb.Message each once decoded.
func emptyElements(size int) []byte {
	b := protowire.AppendTag(nil, 1, protowire.BytesType)
	b = protowire.AppendString(b, "jobs")
	for len(b)+2 <= size {
		b = append(b, 0x12, 0x00) // field 2 (messages), length 0
	}
	return b
}

// allocatedDuring runs f and returns the bytes the process allocated on the
// heap meanwhile: an upper bound of how far f made the heap grow, and,
// unlike a sampled peak, not at the mercy of when the collector runs.
func allocatedDuring(f func()) int64 {
	s := []rtmetrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	rtmetrics.Read(s)
	before := s[0].Value.Uint64()
	f()
	rtmetrics.Read(s)
	return int64(s[0].Value.Uint64() - before)
}

// parallel is how many 9 MiB requests of empty elements a flood sends at once.
const parallel = 6

// emptyElementFlood sends parallel 9 MiB Enqueue requests of empty elements
// on conn at once and returns their errors and the bytes allocated
// meanwhile (allocatedDuring).
func emptyElementFlood(t *testing.T, conn *grpc.ClientConn, parallel int) ([]error, int64) {
	payload := emptyElements(9 << 20)
	errs := make([]error, parallel)
	growth := allocatedDuring(func() {
		var wg sync.WaitGroup
		for i := range parallel {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var out []byte
				errs[i] = conn.Invoke(ctxT(t, 30*time.Second), "/quorumq.v1.Queue/Enqueue", payload, &out, grpc.ForceCodecV2(rawCodec{}))
			}()
		}
		wg.Wait()
	})
	return errs, growth
}

// A caller without a token costs the server nothing to decode: the token
// is checked on the call's headers, before its message is read.
func TestUnauthenticatedRequestsAreRefusedBeforeDecoding(t *testing.T) {
	_, dial := tlsTokenCluster(t)
	conn := dial("")
	errs, growth := emptyElementFlood(t, conn, parallel)
	t.Logf("allocated during %d unauthenticated 9 MiB requests: %.1f MB", parallel, float64(growth)/1e6)
	for i, err := range errs {
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("request %d: %v, want Unauthenticated", i, err)
		}
	}
	if growth > 50e6 {
		t.Fatalf("%.1f MB allocated during %d unauthenticated 9 MiB requests, want under 50 MB", float64(growth)/1e6, parallel)
	}
}

// An authenticated caller's request is counted before it is decoded: one
// holding more nested messages than any legal request is refused, so six
// 9 MiB requests of empty elements cost their bytes, not a hundred times
// as much.
func TestOversizedElementCountsAreRefusedBeforeDecoding(t *testing.T) {
	_, dial := tlsTokenCluster(t)
	conn := dial(writeToken)
	errs, growth := emptyElementFlood(t, conn, parallel)
	t.Logf("allocated during %d authenticated 9 MiB requests: %.1f MB", parallel, float64(growth)/1e6)
	for i, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "nested messages, the most a legal request holds") {
			t.Fatalf("request %d: %v, want a refusal naming the nested-message limit", i, err)
		}
	}
	if growth > 200e6 {
		t.Fatalf("%.1f MB allocated during %d authenticated 9 MiB requests, want under 200 MB", float64(growth)/1e6, parallel)
	}
}

// A receipt names the queue that delivered it: used on another queue, where
// the same message ID may be leased to someone else, it is refused before
// anything is proposed, on every call that takes receipts.
func TestReceiptOfAnotherQueueIsRefused(t *testing.T) {
	c := StartTestCluster(t, 3)
	li := c.Index(c.Leader(t))
	q := quorumqpb.NewQueueClient(c.Conn(t, li))
	receiveOne := func(queue string) *fsmpb.Receipt {
		enqueue(t, c, li, queue, "m-"+queue)
		resp, err := q.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: queue, Max: 1, VisibilityNs: int64(time.Minute)})
		if err != nil || len(resp.GetDeliveries()) != 1 {
			t.Fatalf("receive %s: %v %v", queue, resp, err)
		}
		return resp.GetDeliveries()[0].GetReceipt()
	}
	fromA, fromB := receiveOne("a"), receiveOne("b")
	if fromA.GetMessageId() != fromB.GetMessageId() {
		t.Fatalf("message IDs %d and %d: the test needs the same ID in both queues", fromA.GetMessageId(), fromB.GetMessageId())
	}
	index := c.Nodes[li].AppliedIndex()
	want := `receipt of queue "a" used on queue "b"`
	wrong := []*fsmpb.Receipt{fromA}
	for name, call := range map[string]func() error{
		"ack": func() error {
			_, err := q.Ack(ctxT(t, 10*time.Second), &quorumqpb.AckRequest{Queue: "b", Receipts: wrong})
			return err
		},
		"nack": func() error {
			_, err := q.Nack(ctxT(t, 10*time.Second), &quorumqpb.NackRequest{Queue: "b", Receipts: wrong})
			return err
		},
		"extend": func() error {
			_, err := q.Extend(ctxT(t, 10*time.Second), &quorumqpb.ExtendRequest{Queue: "b", Receipts: wrong, VisibilityNs: int64(time.Minute)})
			return err
		},
		"receive.ack": func() error {
			_, err := q.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: "b", Ack: wrong})
			return err
		},
		"transaction": func() error {
			_, err := q.Transaction(ctxT(t, 10*time.Second), &quorumqpb.TransactionRequest{Acks: []*quorumqpb.AckRequest{{Queue: "b", Receipts: wrong}}})
			return err
		},
	} {
		if err := call(); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), want) {
			t.Errorf("%s on queue b with a receipt of queue a: %v, want FailedPrecondition %q", name, err, want)
		}
	}
	if got := c.Nodes[li].AppliedIndex(); got > index+2 { // a tick may apply meanwhile
		t.Errorf("applied index moved from %d to %d: refused calls were proposed", index, got)
	}
	resp, err := q.Ack(ctxT(t, 10*time.Second), &quorumqpb.AckRequest{Queue: "b", Receipts: []*fsmpb.Receipt{fromB}})
	if err != nil || resp.GetOutcomes()[0] != fsmpb.AckOutcome_ACK_OK {
		t.Fatalf("ack on b with b's receipt: %v %v", resp, err)
	}
}

// The cluster holds at most MaxQueues queues (10,000 by default): a write
// token cannot create queues without end, through CreateQueue or through
// enqueues that auto-create them.
func TestQueueCountIsCapped(t *testing.T) {
	c := StartTestCluster(t, 3)
	li := c.Index(c.Leader(t))
	q := quorumqpb.NewQueueClient(c.Conn(t, li))
	const max = 10000
	body := []*fsmpb.Message{{Body: []byte("x")}}
	for i := 0; i < max; i += 100 {
		tx := &quorumqpb.TransactionRequest{}
		for j := i; j < i+100; j++ {
			tx.Enqueues = append(tx.Enqueues, &quorumqpb.EnqueueRequest{Queue: fmt.Sprintf("q%05d", j), Messages: body})
		}
		if _, err := q.Transaction(ctxT(t, 10*time.Second), tx); err != nil {
			t.Fatalf("transaction creating queues q%05d..: %v", i, err)
		}
	}
	index := c.Nodes[li].AppliedIndex()
	want := "10000 queues exist, limit is 10000 (--max-queues)"
	for name, call := range map[string]func() error{
		"create": func() error {
			_, err := q.CreateQueue(ctxT(t, 10*time.Second), &quorumqpb.CreateQueueRequest{Name: "one-more"})
			return err
		},
		"auto-create": func() error {
			_, err := q.Enqueue(ctxT(t, 10*time.Second), &quorumqpb.EnqueueRequest{Queue: "one-more", Messages: body})
			return err
		},
	} {
		if err := call(); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), want) {
			t.Errorf("%s of queue 10,001: %v, want ResourceExhausted %q", name, err, want)
		}
	}
	if got := c.Nodes[li].AppliedIndex(); got > index+2 { // a tick may apply meanwhile
		t.Errorf("applied index moved from %d to %d: refused calls were proposed", index, got)
	}
	// Existing queues still take messages.
	if _, err := q.Enqueue(ctxT(t, 10*time.Second), &quorumqpb.EnqueueRequest{Queue: "q00042", Messages: body}); err != nil {
		t.Fatalf("enqueue to an existing queue at the limit: %v", err)
	}
}

// Per-queue metric series are bounded: past maxQueueSeries queues, the rest
// are summed into one series labelled queue="(other)", so a scrape stays
// small however many queues exist.
func TestPerQueueSeriesAreBounded(t *testing.T) {
	c := StartTestCluster(t, 3)
	leader := c.Leader(t)
	q := quorumqpb.NewQueueClient(c.Conn(t, c.Index(leader)))
	const queues = maxQueueSeries + 50
	for i := 0; i < queues; i += 100 {
		tx := &quorumqpb.TransactionRequest{}
		for j := i; j < min(i+100, queues); j++ {
			tx.Enqueues = append(tx.Enqueues, &quorumqpb.EnqueueRequest{Queue: fmt.Sprintf("q%05d", j), Messages: []*fsmpb.Message{{Body: []byte("x")}}})
		}
		if _, err := q.Transaction(ctxT(t, 10*time.Second), tx); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err := leader.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "quorumq_queue_messages" && mf.GetName() != "quorumq_queue_enqueued_total" {
			continue
		}
		labels := map[string]float64{}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "queue" {
					v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
					labels[l.GetValue()] += v
				}
			}
		}
		if len(labels) != maxQueueSeries+1 {
			t.Errorf("%s: %d queue label values, want %d queues and (other)", mf.GetName(), len(labels), maxQueueSeries)
		}
		if mf.GetName() == "quorumq_queue_enqueued_total" && labels["(other)"] != 50 {
			t.Errorf("quorumq_queue_enqueued_total{queue=\"(other)\"} = %v, want 50 (one message in each of the 50 queues past the limit)", labels["(other)"])
		}
	}
}
