package cluster

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// batch is the wire bytes of an Enqueue to queue of n messages, each with
// a body of size bytes and attrs attributes, and with a 128-byte dedup ID
// if dedup (without, the same bytes sent again enqueue n more messages).
func batch(t *testing.T, queue string, n, size, attrs int, dedup bool) []byte {
	req := &quorumqpb.EnqueueRequest{Queue: queue}
	for i := range n {
		m := &fsmpb.Message{Body: make([]byte, size)}
		if dedup {
			m.DedupId = fmt.Sprintf("%0128d", i)
		}
		for j := range attrs {
			m.Attributes = append(m.Attributes, &fsmpb.Attribute{Key: fmt.Sprintf("k%02d", j)})
		}
		req.Messages = append(req.Messages, m)
	}
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fullBatch is a full batch by size: eight 1 MiB bodies (8 MiB, the
// default batch limit), without dedup IDs.
func fullBatch(t *testing.T, queue string) []byte { return batch(t, queue, 8, 1<<20, 0, false) }

// nestedBatch is a full batch by count: 1,000 messages of 32 attributes
// each, the most nested messages an Enqueue may hold, each as small as it
// may be.
func nestedBatch(t *testing.T, queue string) []byte { return batch(t, queue, 1000, 1, 32, false) }

// maximalBatch is the largest Enqueue the default limits let through, by
// size and by count at once: 1,000 messages, each with a 128-byte dedup ID
// and 32 three-byte attribute keys, their bodies filling the 8 MiB a batch
// may carry.
func maximalBatch(t *testing.T, queue string) []byte {
	return batch(t, queue, 1000, (8<<20)/1000-32*3, 32, true)
}

// peakOf samples read every millisecond until stop is called, which
// returns the highest reading.
func peakOf(read func() int64) (stop func() int64) {
	var peak int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			if h := read(); h > peak {
				peak = h
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() int64 { close(done); wg.Wait(); return peak }
}

// Many full batches from a write-token holder that arrive together are
// admitted only as far as the memory limit has room for them: each one
// admitted holds its bytes several times over until its Raft round ends
// (the decoded request, the log entry, the state machine's copy), and the
// heap does not show those copies when the next one is checked. The rest
// are refused with ResourceExhausted naming the limit.
func TestConcurrentLargeEnqueuesStayWithinTheMemoryLimit(t *testing.T) {
	const requests, conns = 24, 4
	c, dial := tlsTokenClusterWith(t, 1, func(_ int, cfg *Config) { cfg.MemoryLimit = -1 })
	leader := c.Leader(t)
	batch := fullBatch(t, "big")
	var cs []*grpc.ClientConn
	for range conns {
		cs = append(cs, dial(writeToken))
	}
	send := func(conn *grpc.ClientConn) error {
		var out []byte
		return conn.Invoke(ctxT(t, 60*time.Second), "/quorumq.v1.Queue/Enqueue", batch, &out, grpc.ForceCodecV2(rawCodec{}))
	}
	if err := send(cs[0]); err != nil { // a full batch is legal
		t.Fatalf("one full batch without a memory limit: %v", err)
	}

	// Room under the limit for every request to arrive and be decoded
	// (gRPC reads and decodes a request before any interceptor runs), not
	// for all of them to be served.
	runtime.GC()
	heap0 := heapBytes()
	limit := heap0 + requests*24<<20
	leader.guard.limit.Store(limit)

	errs := make([]error, requests)
	stop := peakOf(heapBytes)
	stopReserved := peakOf(func() int64 { return int64(testutil.ToFloat64(leader.metrics.memoryReserved)) })
	start := time.Now()
	var wg sync.WaitGroup
	for i := range requests {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = send(cs[i%conns]) }()
	}
	wg.Wait()
	took := time.Since(start)
	peak, reservedPeak := stop(), stopReserved()
	runtime.GC()
	runtime.GC() // the second empties the buffer pools' victim caches
	after := heapBytes()

	admitted := 0
	for i, err := range errs {
		switch {
		case err == nil:
			admitted++
		case status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "(--memory-limit)"):
			t.Errorf("request %d: %v, want success or ResourceExhausted naming --memory-limit", i, err)
		}
	}
	mb := func(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/1e6) }
	t.Logf("%d full batches (%d bytes each) at once in %v: %d admitted, %d refused; heap before %s, limit %s, peak %s, after GC %s; reserved at most %s",
		requests, len(batch), took.Round(time.Millisecond), admitted, requests-admitted, mb(heap0), mb(limit), mb(peak), mb(after), mb(reservedPeak))
	if admitted == requests {
		t.Errorf("all %d full batches admitted with room for %s under the limit", requests, mb(limit-heap0))
	}
	// What the guard holds to: the requests in flight at one moment
	// reserve no more than the room under the limit (each at least
	// costPerWireByte times its wire size). Requests admitted one after
	// another may together reserve more, since each gives its reservation
	// back when its Raft round ends; the test counts what is reserved at
	// once. What the guard does not count is what gRPC holds before the
	// guard sees a request (wire bytes, a copy, the decoded message: about
	// 25 MB for a full batch, docs/security.md), so the heap may pass the
	// limit by that much for each request in flight, and by no more.
	const slack = 16 << 20
	if reservedPeak > limit-heap0+slack {
		t.Errorf("requests in flight reserved %s at once, with room for %s under the limit: the batches admitted together overshot it",
			mb(reservedPeak), mb(limit-heap0))
	}
	if least := costPerWireByte * int64(len(batch)); reservedPeak > 0 && reservedPeak < least {
		t.Errorf("requests in flight reserved at most %s, less than one full batch's cost of %s", mb(reservedPeak), mb(least))
	}
	if preGuard := int64(requests) * 32 << 20; peak > limit+preGuard+slack {
		t.Errorf("heap peaked at %s, %s above the limit of %s, more than gRPC holds before the guard for %d requests (%s)",
			mb(peak), mb(peak-limit), mb(limit), requests, mb(preGuard))
	}
	if after > limit {
		t.Errorf("heap after GC is %s, %s above the limit of %s", mb(after), mb(after-limit), mb(limit))
	}
	if reservedPeak == 0 {
		t.Errorf("quorumq_memory_guard_reserved_bytes stayed 0 while %d full batches were served", admitted)
	}
	if got := testutil.ToFloat64(leader.metrics.memoryReserved); got != 0 {
		t.Errorf("quorumq_memory_guard_reserved_bytes is %v after every call ended, want 0", got)
	}
}

// The memory guard's reservation for a request covers what serving it adds
// to the heap beyond what gRPC holds before the guard sees it (its wire
// bytes, the codec's contiguous copy of them, the decoded request): the
// heap's peak during one request of each shape stays within the two. The
// numbers logged are docs/security.md's worst case of one request.
func TestWorstCaseHeapOfOneRequest(t *testing.T) {
	_, dial := tlsTokenClusterWith(t, 1, func(_ int, cfg *Config) { cfg.MemoryLimit = -1 })
	conn := dial(writeToken)
	send := func(b []byte) error {
		var out []byte
		return conn.Invoke(ctxT(t, 60*time.Second), "/quorumq.v1.Queue/Enqueue", b, &out, grpc.ForceCodecV2(rawCodec{}))
	}
	mb := func(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/1e6) }
	for _, tc := range []struct {
		name string
		b    func(t *testing.T, queue string) []byte
	}{
		{"8 x 1 MiB bodies", fullBatch},
		{"1,000 messages x 32 attributes", nestedBatch},
		{"maximal: 1,000 messages x 32 attributes, 128-byte dedup IDs, 8 MiB of bodies", maximalBatch},
	} {
		if err := send(tc.b(t, "warm")); err != nil { // pools and the queue exist
			t.Fatalf("%s: %v", tc.name, err)
		}
		b := tc.b(t, "q")
		req := &quorumqpb.EnqueueRequest{}
		var decodeErr error
		decoded := allocatedDuring(func() { decodeErr = proto.Unmarshal(b, req) })
		if decodeErr != nil {
			t.Fatal(decodeErr)
		}
		before := 2*int64(len(b)) + decoded
		cost := requestCost(req)
		req = nil

		runtime.GC()
		runtime.GC()
		h0 := heapBytes()
		stop := peakOf(heapBytes)
		var err error
		alloc := allocatedDuring(func() { err = send(b) })
		peak := stop() - h0
		runtime.GC()
		runtime.GC()
		retained := heapBytes() - h0
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		t.Logf("%s: %d bytes on the wire; before the guard %s (wire, copy, decoded %s); reserved %s; allocated %s in all, heap peak +%s, retained +%s",
			tc.name, len(b), mb(before), mb(decoded), mb(cost), mb(alloc), mb(peak), mb(retained))
		if peak > before+cost {
			t.Errorf("%s: heap peaked %s above its start, more than the %s held before the guard plus the %s it reserved", tc.name, mb(peak), mb(before), mb(cost))
		}
	}
}

// A stream's requests hold their reservations only until they are answered
// or the stream ends, also when it ends with a refused request: nothing is
// left reserved after the stream, so later enqueues are not refused for
// memory a finished stream no longer uses.
func TestStreamReservationsEndWithTheirAnswers(t *testing.T) {
	c := StartTestClusterWith(t, 1, func(_ int, cfg *Config) { cfg.MemoryLimit = 1 << 40 })
	leader := c.Leader(t)
	q := quorumqpb.NewQueueClient(c.Conn(t, 0))
	reserved := func() float64 { return testutil.ToFloat64(leader.metrics.memoryReserved) }
	msg := func(queue string) *quorumqpb.EnqueueRequest {
		return &quorumqpb.EnqueueRequest{Queue: queue, Messages: []*fsmpb.Message{{Body: make([]byte, 64<<10)}}}
	}

	st, err := q.EnqueueStream(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := st.Send(msg("s")); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		if _, err := st.Recv(); err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
	}
	if got := reserved(); got != 0 {
		t.Errorf("%v bytes reserved after all five requests of an open stream were answered, want 0", got)
	}
	st.CloseSend()
	if _, err := st.Recv(); err != io.EOF {
		t.Fatalf("end of stream: %v", err)
	}

	st, err = q.EnqueueStream(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, queue := range []string{"s", "not a queue name", "s"} {
		if err := st.Send(msg(queue)); err != nil && err != io.EOF {
			t.Fatal(err)
		}
	}
	for {
		if _, err := st.Recv(); err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("stream with an invalid queue name ended with %v, want InvalidArgument", err)
			}
			break
		}
	}
	if got := reserved(); got != 0 {
		t.Errorf("%v bytes reserved after a stream ended with a refused request, want 0", got)
	}
}

// TestHeapReturnsAfterADrain fills a three-node cluster with 192 MiB of
// 64 KiB messages (a dedup ID on every one), wants the heap to grow by
// far less than the bodies (they are in each node's body store, and the
// heap holds the index and the log caches), drains it the way a consumer
// does (receives with request IDs, each acking the batch before), and then
// wants, within a minute, the heap the memory guard reads back within
// twice its size before the fill, and the guard taking sends again, while
// the dedup window still answers for every message: each dedup ID is a
// duplicate of its message, each request ID leases nothing new and each
// receipt acks again as ACK_OK.
//
// "Before the fill" is a cluster that has already served the same
// traffic on a small scale (16 MiB filled and drained), so that its log
// caches and buffer pools hold what they hold in service; an idle cluster
// that never saw a message is not what a drain should return to. The three
// nodes share this process's heap, so the fill is 576 MiB of bodies in
// all; the 1 GB per node of a production drain would not fit a CI
// machine running the other packages' tests beside this one.
func TestHeapReturnsAfterADrain(t *testing.T) {
	const (
		size  = 64 << 10
		warm  = 256
		n     = 3072
		batch = 64 // messages per enqueue: 4 MiB
		take  = 32 // per receive: 2 MiB, under the client's 4 MiB default
		queue = "drain"
	)
	// No ticks: WaitReplicated compares the state hashes of all nodes at
	// one applied index, and hashing 192 MiB outlasts a tick interval.
	// Each node's body buffer holds 16 MiB of the newest bodies: bounded,
	// and small beside the bodies of the fill.
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) {
		cfg.TickInterval = time.Hour
		cfg.BodyCacheBytes = 16 << 20
	})
	leader := c.Leader(t)
	api := quorumqpb.NewQueueClient(c.Conn(t, c.Index(leader)))
	ctx := ctxT(t, 3*time.Minute)

	// fill enqueues messages first to first+count-1 (message IDs first+1
	// on), with dedup IDs d<number>.
	fill := func(first, count int) {
		for i := first; i < first+count; i += batch {
			req := &quorumqpb.EnqueueRequest{Queue: queue}
			for j := i; j < i+batch; j++ {
				body := make([]byte, size)
				body[0] = byte(j)
				req.Messages = append(req.Messages, &fsmpb.Message{Body: body, DedupId: fmt.Sprintf("d%05d", j)})
			}
			if _, err := api.Enqueue(ctx, req); err != nil {
				t.Fatalf("enqueue messages %d to %d: %v", i, i+batch-1, err)
			}
		}
		c.WaitReplicated(t)
	}
	// drain receives until the queue is empty, with request IDs
	// <prefix><number>, and returns the receipts.
	drain := func(prefix string) []*fsmpb.Receipt {
		var receipts, pending []*fsmpb.Receipt
		for r := 0; ; r++ {
			res, err := api.Receive(ctx, &quorumqpb.ReceiveRequest{Queue: queue, Max: take, RequestId: fmt.Sprintf("%s%03d", prefix, r), Ack: pending})
			if err != nil {
				t.Fatalf("receive %s%03d: %v", prefix, r, err)
			}
			pending = nil
			for _, d := range res.GetDeliveries() {
				pending = append(pending, d.GetReceipt())
			}
			receipts = append(receipts, pending...)
			if len(pending) == 0 {
				c.WaitReplicated(t)
				return receipts
			}
		}
	}

	fill(n, warm)
	drain("warm")
	runtime.GC()
	before := heapBytes()
	fill(0, n)
	runtime.GC()
	filled := heapBytes()
	if filled-before > 3*n*size/4 {
		t.Fatalf("the heap grew by %d MiB through the fill of %d MiB of bodies, want under a quarter of that: bodies are held in memory", (filled-before)>>20, 3*n*size>>20)
	}
	receipts := drain("r")
	if len(receipts) != n {
		t.Fatalf("drained %d messages, want %d", len(receipts), n)
	}

	// The guard refuses sends above twice the heap before the fill.
	leader.guard.limit.Store(2 * before)
	start := time.Now()
	for leader.guard.admit(0) != nil {
		if time.Since(start) > time.Minute {
			t.Fatalf("a minute after the drain the heap holds %d MiB; before the fill it held %d MiB, full %d MiB",
				heapBytes()>>20, before>>20, filled>>20)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("heap: %d MiB before the fill, %d MiB full, %d MiB %v after the drain",
		before>>20, filled>>20, heapBytes()>>20, time.Since(start).Round(time.Millisecond))

	late := enqueue(t, c, c.Index(leader), queue, "late")[0]
	for i := 0; i < n; i += batch {
		req := &quorumqpb.EnqueueRequest{Queue: queue}
		for j := i; j < i+batch; j++ {
			req.Messages = append(req.Messages, &fsmpb.Message{Body: []byte("again"), DedupId: fmt.Sprintf("d%05d", j)})
		}
		resp, err := api.Enqueue(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		for k, e := range resp.GetResults() {
			if want := uint64(warm + i + k + 1); !e.GetDuplicate() || e.GetMessageId() != want {
				t.Fatalf("dedup ID d%05d after the drain: %v, want a duplicate of message %d", i+k, e, want)
			}
		}
	}
	for r := 0; r < n/take; r++ {
		res, err := api.Receive(ctx, &quorumqpb.ReceiveRequest{Queue: queue, Max: take, RequestId: fmt.Sprintf("r%03d", r)})
		if err != nil || len(res.GetDeliveries()) != 0 {
			t.Fatalf("request ID r%03d after the drain: %v, %v; want its replay, which leases nothing (message %d is ready)", r, res, err, late.GetMessageId())
		}
	}
	for i := 0; i < n; i += batch {
		resp, err := api.Ack(ctx, &quorumqpb.AckRequest{Queue: queue, Receipts: receipts[i : i+batch]})
		if err != nil {
			t.Fatal(err)
		}
		for k, o := range resp.GetOutcomes() {
			if o != fsmpb.AckOutcome_ACK_OK {
				t.Fatalf("receipt %v acked again: %v, want ACK_OK", receipts[i+k], o)
			}
		}
	}
}

// TestMemoryGuardCollectsBeforeRefusing checks that the guard refuses on
// what the heap holds after a collection, not on garbage the collector
// has not reached yet, and that it collects at most once per
// guardCollectEvery.
func TestMemoryGuardCollectsBeforeRefusing(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1)) // no collection but the guard's
	runtime.GC()
	live := heapBytes()
	g := newMemoryGuard(live+64<<20, prometheus.NewCounter(prometheus.CounterOpts{Name: "rejects"}), prometheus.NewGauge(prometheus.GaugeOpts{Name: "reserved"}))
	garbage := func() {
		for range 32 {
			keep = make([]byte, 8<<20)
		}
		keep = nil
	}
	garbage()
	if heapBytes() <= g.limit.Load() {
		t.Fatalf("the heap holds %d MiB with 256 MiB of garbage, want more than the %d MiB limit", heapBytes()>>20, g.limit.Load()>>20)
	}
	if err := g.admit(0); err != nil {
		t.Fatalf("with the heap over the limit only by garbage: %v", err)
	}
	garbage()
	if err := g.admit(0); err == nil {
		t.Fatal("a second collection within guardCollectEvery: want the refusal")
	}
}

// keep makes the garbage of TestMemoryGuardCollectsBeforeRefusing escape.
var keep []byte

// Every API method has a memory-guard decision: whether it adds messages
// (and is refused while the heap is over the limit) is chosen for each
// method, so a new rpc that carries messages cannot slip past the guard.
func TestEveryMethodHasAMemoryGuardDecision(t *testing.T) {
	for _, m := range apiMethods() {
		if _, ok := methodAddsMessages[m]; !ok {
			t.Errorf("%s has no entry in methodAddsMessages", m)
		}
	}
	for m := range methodAddsMessages {
		if !slices.Contains(apiMethods(), m) {
			t.Errorf("methodAddsMessages lists %s, which the API does not serve", m)
		}
	}
}
