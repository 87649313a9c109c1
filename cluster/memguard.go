package cluster

import (
	"bufio"
	"context"
	"os"
	"runtime"
	rtmetrics "runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// memoryGuard refuses calls that add messages (Enqueue, EnqueueStream,
// Transaction) while the Go heap holds more than limit bytes. Every message
// lives in memory on every node (the FSM is in RAM), so a queue that only
// grows would end in an out-of-memory kill of all nodes at about the same
// time; refusing enqueues with ResourceExhausted turns that into
// back-pressure producers can see, while consumers keep draining. The heap
// is read with runtime/metrics, which does not stop the world.
//
// A request that is admitted allocates most of its cost after the check:
// the encoded log entry, the log store's encoding and pages, the state
// machine's copy (requestCost). Requests checked together would each see a
// heap without the others' rounds and all be admitted, so each admitted
// request reserves its cost until its Raft round ends, and a request is
// admitted only while heap + reserved + its own cost stays within the
// limit. What the guard cannot count: the bytes gRPC reads and decodes
// before any interceptor runs (docs/security.md, "Worst-case memory of one
// request").
//
// Heap objects count garbage until a collection frees it, and after a
// backlog is drained that can be most of the heap for minutes: the
// collector starts a cycle when the heap has doubled since the last one
// (or after two minutes), and a cluster that only refuses sends allocates
// little. So a guard that would refuse first collects, at most once per
// guardCollectEvery, and refuses only if the heap is still too full.
type memoryGuard struct {
	limit     atomic.Int64 // <= 0: off
	rejects   prometheus.Counter
	reserved  prometheus.Gauge // the same as inFlight, for /metrics
	collected atomic.Int64     // when the guard last ran a collection, unix ns

	mu       sync.Mutex
	inFlight int64 // bytes reserved by admitted requests not yet served
}

// guardCollectEvery bounds the collections the guard runs: a full
// collection of a heap that is really full takes tens to hundreds of
// milliseconds of CPU.
const guardCollectEvery = 5 * time.Second

func newMemoryGuard(limit int64, rejects prometheus.Counter, reserved prometheus.Gauge) *memoryGuard {
	g := &memoryGuard{rejects: rejects, reserved: reserved}
	g.limit.Store(limit)
	return g
}

const heapObjectsMetric = "/memory/classes/heap/objects:bytes"

func heapBytes() int64 {
	s := []rtmetrics.Sample{{Name: heapObjectsMetric}}
	rtmetrics.Read(s)
	if s[0].Value.Kind() != rtmetrics.KindUint64 {
		return 0
	}
	return int64(s[0].Value.Uint64())
}

// What an admitted request still allocates on the leader after the guard
// admitted it, per byte of its wire size and per nested message it holds
// (a message, an attribute, a receipt). Measured with one node, TLS and a
// write token (TestWorstCaseHeapOfOneRequest): a full batch of 8 MiB of
// bodies allocated 9 to 11 times its size after decoding (the command
// encoded for the log, raft-boltdb's msgpack encoding of the entry in a
// buffer that doubles as it grows, bbolt's pages for it, the state
// machine's decoded copy); a batch of 1,000 messages with 32 attributes
// each, about 750 bytes per nested message beyond that. Garbage counts
// until the collector runs, which is when the heap is at its highest. The
// factor is set above the highest measured, so that the reservation
// covers a request's cost rather than its usual one (at 10, a full batch
// once peaked 0.3 MB above what was held before the guard plus reserved).
const (
	costPerWireByte      = 12
	costPerNestedMessage = 1 << 10
)

// requestCost is what the guard reserves for req while it is served.
func requestCost(req proto.Message) int64 {
	return costPerWireByte*int64(proto.Size(req)) + costPerNestedMessage*nestedMessages(req.ProtoReflect())
}

// nestedMessages counts the messages held in m at any depth.
func nestedMessages(m protoreflect.Message) int64 {
	var n int64
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			n += int64(v.Map().Len())
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := range l.Len() {
				n += 1 + nestedMessages(l.Get(i).Message())
			}
		case fd.Message() != nil:
			n += 1 + nestedMessages(v.Message())
		}
		return true
	})
	return n
}

// tap refuses a call that adds messages while the heap and the
// reservations already exceed the limit, before gRPC reads its message:
// while the guard is full, a request's bytes are not even received.
func (g *memoryGuard) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if addsMessages(info.FullMethodName) {
		if err := g.admit(0); err != nil {
			return ctx, err
		}
	}
	return ctx, nil
}

func (g *memoryGuard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if m, ok := req.(proto.Message); ok && addsMessages(info.FullMethod) {
		release, err := g.reserve(requestCost(m))
		if err != nil {
			return nil, err
		}
		defer release()
	}
	return h(ctx, req)
}

// stream guards every request of a stream that adds messages, as it
// arrives: a refused request ends the stream with the error. Each admitted
// request's reservation lasts until its answer is sent (the stream answers
// requests in order, one answer each) or the stream ends.
func (g *memoryGuard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if !addsMessages(info.FullMethod) {
		return h(srv, ss)
	}
	gs := &guardedStream{ServerStream: ss, g: g}
	defer gs.end()
	return h(srv, gs)
}

type guardedStream struct {
	grpc.ServerStream
	g *memoryGuard

	mu      sync.Mutex
	pending []func() // releases of requests not yet answered, oldest first
	ended   bool
}

func (s *guardedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	pm, ok := m.(proto.Message)
	if !ok {
		return nil
	}
	release, err := s.g.reserve(requestCost(pm))
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended { // the handler returned while this request was being read
		release()
		return nil
	}
	s.pending = append(s.pending, release)
	return nil
}

func (s *guardedStream) SendMsg(m any) error {
	err := s.ServerStream.SendMsg(m)
	s.mu.Lock()
	var release func()
	if len(s.pending) > 0 {
		release = s.pending[0]
		s.pending = s.pending[1:]
	}
	s.mu.Unlock()
	if release != nil {
		release()
	}
	return err
}

func (s *guardedStream) end() {
	s.mu.Lock()
	pending := s.pending
	s.pending, s.ended = nil, true
	s.mu.Unlock()
	for _, release := range pending {
		release()
	}
}

// reserve admits a request that will cost about cost bytes and holds them
// until release is called, or refuses it (admit).
func (g *memoryGuard) reserve(cost int64) (release func(), err error) {
	if g.limit.Load() <= 0 {
		return func() {}, nil
	}
	if err := g.admit(cost); err != nil {
		return nil, err
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			g.inFlight -= cost
			g.mu.Unlock()
			g.reserved.Sub(float64(cost))
		})
	}, nil
}

// admit reserves cost bytes, or returns the memory guard's refusal when the
// heap, the bytes reserved by requests in flight and cost together exceed
// the limit. The refusal names the limit and what filled it.
func (g *memoryGuard) admit(cost int64) error {
	limit := g.limit.Load()
	if limit <= 0 {
		return nil
	}
	heap, reserved, ok := g.take(cost, limit)
	if !ok && g.collect() {
		heap, reserved, ok = g.take(cost, limit)
	}
	if ok {
		g.reserved.Add(float64(cost))
		return nil
	}
	g.rejects.Inc()
	return status.Error(codes.ResourceExhausted,
		"memory guard: heap holds "+strconv.FormatInt(heap, 10)+" bytes, requests in flight reserve "+strconv.FormatInt(reserved, 10)+
			", this one needs "+strconv.FormatInt(cost, 10)+"; limit is "+strconv.FormatInt(limit, 10)+
			" (--memory-limit); enqueues are refused until consumers drain queues")
}

// take reserves cost if the heap, the reservations and cost fit within
// limit, and returns what it found.
func (g *memoryGuard) take(cost, limit int64) (heap, reserved int64, ok bool) {
	heap = heapBytes()
	g.mu.Lock()
	defer g.mu.Unlock()
	reserved = g.inFlight
	ok = heap+reserved+cost <= limit
	if ok {
		g.inFlight += cost
	}
	return heap, reserved, ok
}

// collect runs a garbage collection unless one of the guard's ran less
// than guardCollectEvery ago (or runs now), and reports whether it did.
func (g *memoryGuard) collect() bool {
	now := time.Now().UnixNano()
	last := g.collected.Load()
	if now-last < int64(guardCollectEvery) || !g.collected.CompareAndSwap(last, now) {
		return false
	}
	runtime.GC()
	return true
}

// addsMessages reports whether method carries messages to enqueue, which
// the guard refuses while the heap is over the limit.
func addsMessages(method string) bool { return methodAddsMessages[method] }

// methodAddsMessages holds the guard's decision for every API method (a
// test checks that none is missing); other services, such as health
// checks, are never refused.
var methodAddsMessages = map[string]bool{
	quorumqpb.Queue_Enqueue_FullMethodName:       true,
	quorumqpb.Queue_EnqueueStream_FullMethodName: true,
	quorumqpb.Queue_Transaction_FullMethodName:   true,
	// Receive may ack, which frees memory; the others carry no messages.
	quorumqpb.Queue_CreateQueue_FullMethodName:          false,
	quorumqpb.Queue_UpdateQueue_FullMethodName:          false,
	quorumqpb.Queue_GetQueue_FullMethodName:             false,
	quorumqpb.Queue_ListQueues_FullMethodName:           false,
	quorumqpb.Queue_Peek_FullMethodName:                 false,
	quorumqpb.Queue_Lookup_FullMethodName:               false,
	quorumqpb.Queue_DeleteQueue_FullMethodName:          false,
	quorumqpb.Queue_Purge_FullMethodName:                false,
	quorumqpb.Queue_Receive_FullMethodName:              false,
	quorumqpb.Queue_Ack_FullMethodName:                  false,
	quorumqpb.Queue_Nack_FullMethodName:                 false,
	quorumqpb.Queue_Extend_FullMethodName:               false,
	quorumqpb.Queue_Reject_FullMethodName:               false,
	quorumqpb.Queue_Redrive_FullMethodName:              false,
	quorumqpb.Cluster_Status_FullMethodName:             false,
	quorumqpb.Cluster_NodeStatus_FullMethodName:         false,
	quorumqpb.Cluster_Members_FullMethodName:            false,
	quorumqpb.Cluster_Leader_FullMethodName:             false,
	quorumqpb.Cluster_RemoveServer_FullMethodName:       false,
	quorumqpb.Cluster_TransferLeadership_FullMethodName: false,
	quorumqpb.Cluster_Snapshot_FullMethodName:           false,
	quorumqpb.Cluster_Backup_FullMethodName:             false,
}

// defaultMemoryLimit is 80% of the memory this process may use: the
// cgroup v2 limit when there is one, otherwise physical memory. The rest
// is headroom for garbage not yet collected, gRPC buffers and snapshots.
// It returns -1 (no guard) when neither can be read.
func defaultMemoryLimit() int64 {
	avail := physicalMemory()
	if b, err := os.ReadFile("/sys/fs/cgroup/memory.max"); err == nil {
		if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && (avail <= 0 || v < avail) {
			avail = v
		}
	}
	if avail <= 0 {
		return -1
	}
	return avail / 10 * 8
}

func physicalMemory() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb * 1024
		}
	}
	return 0
}
