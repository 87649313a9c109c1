package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
	"github.com/quorumq/quorumq/transport/wire"
)

// scripted is a gRPC node whose answers a test scripts, to pin down the
// client's retry rules for answers a real cluster gives only by chance
// (an outcome-unknown reply, a follower with no leader). The guarantees
// themselves are tested against the real cluster in cluster_test.go.
type scripted struct {
	quorumqpb.UnimplementedQueueServer
	quorumqpb.UnimplementedClusterServer
	addr string

	mu       sync.Mutex
	leader   string  // API address reported by Leader and NotLeader
	failures []error // returned by the next calls of Enqueue/CreateQueue/Receive, in order
	dedupIDs []string
	reqIDs   []string
	waits    []int64
	creates  int
	// With refuseGroups, Enqueue refuses a request that has a message
	// with a group, as a cluster with a voter of an earlier release does;
	// batches records each Enqueue's message count, and a non-nil hold
	// delays every Enqueue until it is closed.
	refuseGroups bool
	batches      []int
	hold         chan struct{}
}

func startScripted(t *testing.T) *scripted {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scripted{addr: lis.Addr().String()}
	s.leader = s.addr
	srv := grpc.NewServer()
	quorumqpb.RegisterQueueServer(srv, s)
	quorumqpb.RegisterClusterServer(srv, s)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return s
}

func (s *scripted) next() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.failures) == 0 {
		return nil
	}
	err := s.failures[0]
	s.failures = s.failures[1:]
	return err
}

func (s *scripted) Members(context.Context, *quorumqpb.MembersRequest) (*quorumqpb.MembersResponse, error) {
	return &quorumqpb.MembersResponse{Members: []*quorumqpb.Member{{Id: "n", ApiAddr: s.addr, State: "alive"}}}, nil
}

func (s *scripted) Leader(context.Context, *quorumqpb.LeaderRequest) (*quorumqpb.LeaderResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &quorumqpb.LeaderResponse{LeaderId: "n", LeaderApiAddr: s.leader}, nil
}

func (s *scripted) Enqueue(_ context.Context, req *quorumqpb.EnqueueRequest) (*quorumqpb.EnqueueResponse, error) {
	s.mu.Lock()
	for _, m := range req.GetMessages() {
		s.dedupIDs = append(s.dedupIDs, m.GetDedupId())
	}
	s.batches = append(s.batches, len(req.GetMessages()))
	hold, refuseGroups := s.hold, s.refuseGroups
	s.mu.Unlock()
	if hold != nil {
		<-hold
	}
	if err := s.next(); err != nil {
		return nil, err
	}
	for i, m := range req.GetMessages() {
		if refuseGroups && m.GetGroup() != "" {
			return nil, status.Errorf(codes.FailedPrecondition, "enqueue.messages[%d].group: a voter does not know message groups yet (a server of an earlier release); retry once every server is upgraded", i)
		}
	}
	res := make([]*fsmpb.EnqueueResult, len(req.GetMessages()))
	for i := range res {
		res[i] = &fsmpb.EnqueueResult{MessageId: uint64(i + 1)}
	}
	return &quorumqpb.EnqueueResponse{Results: res}, nil
}

func (s *scripted) Receive(_ context.Context, req *quorumqpb.ReceiveRequest) (*quorumqpb.ReceiveResponse, error) {
	s.mu.Lock()
	s.reqIDs = append(s.reqIDs, req.GetRequestId())
	s.waits = append(s.waits, req.GetWaitNs())
	s.mu.Unlock()
	if err := s.next(); err != nil {
		return nil, err
	}
	return &quorumqpb.ReceiveResponse{}, nil
}

func (s *scripted) CreateQueue(context.Context, *quorumqpb.CreateQueueRequest) (*quorumqpb.CreateQueueResponse, error) {
	s.mu.Lock()
	s.creates++
	s.mu.Unlock()
	if err := s.next(); err != nil {
		return nil, err
	}
	return &quorumqpb.CreateQueueResponse{Queue: &fsmpb.QueueInfo{Name: "q"}}, nil
}

// seen returns copies of what the server recorded.
func (s *scripted) seen() (dedupIDs, reqIDs []string, waits []int64, creates int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.dedupIDs...), append([]string(nil), s.reqIDs...), append([]int64(nil), s.waits...), s.creates
}

func scriptedClient(t *testing.T, addrs ...string) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.New(ctx, addrs, client.WithBackoff(time.Millisecond, 5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRetryAfterUnknownOutcomeReusesTheDedupID(t *testing.T) {
	s := startScripted(t)
	s.failures = []error{
		wire.OutcomeUnknownError("leadership lost"),
		status.Error(codes.Unavailable, "connection reset"), // no NotLeader detail: may have been applied
		wire.NotLeaderError("", ""),                         // election running
	}
	c := scriptedClient(t, s.addr)
	r, err := c.Send(context.Background(), "q", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	ids, _, _, _ := s.seen()
	if len(ids) != 4 {
		t.Fatalf("server saw %d attempts, want 4", len(ids))
	}
	for i, id := range ids {
		if id != r.DedupID || id == "" {
			t.Fatalf("attempt %d carried dedup ID %q, want %q on every attempt", i, id, r.DedupID)
		}
	}
}

func TestRetriedReceiveKeepsItsRequestIDAndStopsPolling(t *testing.T) {
	s := startScripted(t)
	s.failures = []error{wire.OutcomeUnknownError("timeout")}
	c := scriptedClient(t, s.addr)
	if _, err := c.Receive(context.Background(), "q", 5, client.WithWait(3*time.Second)); err != nil {
		t.Fatal(err)
	}
	_, reqIDs, waits, _ := s.seen()
	if len(reqIDs) != 2 || reqIDs[0] == "" || reqIDs[0] != reqIDs[1] {
		t.Fatalf("request IDs %q; want the same non-empty ID on both attempts", reqIDs)
	}
	if waits[0] != int64(3*time.Second) || waits[1] != 0 {
		t.Fatalf("waits %v; the retry must not long-poll past its own leased deliveries", waits)
	}
}

func TestNonIdempotentCallSurfacesUnknownOutcome(t *testing.T) {
	s := startScripted(t)
	s.failures = []error{wire.OutcomeUnknownError("leadership lost")}
	c := scriptedClient(t, s.addr)
	_, err := c.CreateQueue(context.Background(), "q", client.QueueSettings{})
	if !errors.Is(err, client.ErrOutcomeUnknown) {
		t.Fatalf("CreateQueue = %v; want ErrOutcomeUnknown", err)
	}
	if _, _, _, n := s.seen(); n != 1 {
		t.Fatalf("CreateQueue was sent %d times; a non-idempotent call must not be retried", n)
	}
	// The idempotent form is retried.
	s.mu.Lock()
	s.failures = []error{wire.OutcomeUnknownError("leadership lost")}
	s.mu.Unlock()
	_, err = c.EnsureQueue(context.Background(), "q", client.QueueSettings{})
	if _, _, _, n := s.seen(); err != nil || n != 3 {
		t.Fatalf("EnsureQueue = %v after %d creates in all; want success on its retry (3)", err, n)
	}
}

func TestNotLeaderHintIsFollowed(t *testing.T) {
	leader, follower := startScripted(t), startScripted(t)
	// The client knows only the follower, which at connect time names
	// itself leader (a stale view), then refuses with a hint.
	follower.failures = []error{wire.NotLeaderError("n", leader.addr)}
	c := scriptedClient(t, follower.addr)
	if _, err := c.Send(context.Background(), "q", []byte("x")); err != nil {
		t.Fatal(err)
	}
	fIDs, _, _, _ := follower.seen()
	lIDs, _, _, _ := leader.seen()
	if len(fIDs) != 1 || len(lIDs) != 1 || fIDs[0] != lIDs[0] {
		t.Fatalf("follower saw %v, leader saw %v; want one refused attempt, then the same message at the hinted leader", fIDs, lIDs)
	}
}

func TestDefiniteErrorsAreNotRetried(t *testing.T) {
	s := startScripted(t)
	s.failures = []error{wire.QueueError(fsmpb.ErrorCode_QUEUE_FULL, `queue "q" is full (max_depth 10)`)}
	c := scriptedClient(t, s.addr)
	_, err := c.Send(context.Background(), "q", []byte("x"))
	if ids, _, _, _ := s.seen(); !errors.Is(err, client.ErrQueueFull) || len(ids) != 1 {
		t.Fatalf("Send = %v after %d attempts; want ErrQueueFull after 1", err, len(ids))
	}
}

// TestProducerFallsBackToUnaryOnAServerWithoutStreams: a server of a
// release before EnqueueStream answers it Unimplemented; a Producer with
// batches in flight then sends them one at a time with Enqueue, in order,
// and every send succeeds.
func TestProducerFallsBackToUnaryOnAServerWithoutStreams(t *testing.T) {
	s := startScripted(t)
	c := scriptedClient(t, s.addr)
	p := c.NewProducer(client.WithBatchesInFlight(4), client.WithBatchLimits(3, 1<<20))
	defer p.Close()
	var futs []*client.SendFuture
	var want []string
	for i := range 30 {
		id := fmt.Sprintf("m%02d", i)
		want = append(want, id)
		futs = append(futs, p.SendAsync(context.Background(), "q", client.OutMessage{Body: []byte(id), DedupID: id}))
	}
	for i, f := range futs {
		if _, err := f.Wait(context.Background()); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	got, _, _, _ := s.seen()
	if !slices.Equal(got, want) {
		t.Fatalf("server got dedup IDs %v, want %v in order", got, want)
	}
}

// TestGatheredSendsOfAGroupRefusedAloneDuringAnUpgrade: while a voter of
// an earlier release does not know message groups, the cluster refuses
// an enqueue with a grouped message. Sends gathered into one batch with
// such a message are then sent again alone: only the grouped one fails.
func TestGatheredSendsOfAGroupRefusedAloneDuringAnUpgrade(t *testing.T) {
	s := startScripted(t)
	s.refuseGroups = true
	s.hold = make(chan struct{})
	c := scriptedClient(t, s.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	errs := make([]error, 4)
	var wg sync.WaitGroup
	send := func(i int, opts ...client.SendOption) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = c.Send(ctx, "q", []byte{byte(i)}, opts...)
		}()
	}
	// The first Send is on the wire, held; the next three gather behind it.
	send(0)
	for d, _, _, _ := s.seen(); len(d) == 0; d, _, _, _ = s.seen() {
		time.Sleep(time.Millisecond)
	}
	send(1)
	send(2, client.WithGroup("g"))
	send(3)
	time.Sleep(200 * time.Millisecond)
	close(s.hold)
	wg.Wait()

	s.mu.Lock()
	batches := slices.Clone(s.batches)
	s.mu.Unlock()
	if !slices.Contains(batches, 3) {
		t.Fatalf("enqueue batches %v; want the three later Sends gathered into one", batches)
	}
	for i, err := range errs {
		if i == 2 {
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "message groups") {
				t.Errorf("grouped Send = %v; want the FailedPrecondition refusal", err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Send %d without a group = %v; want it enqueued", i, err)
		}
	}
}
