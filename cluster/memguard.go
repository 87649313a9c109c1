package cluster

import (
	"bufio"
	"context"
	"os"
	rtmetrics "runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// memoryGuard refuses calls that add messages (Enqueue, Transaction)
// while the Go heap holds more than limit bytes. Every message lives in
// memory on every node (the FSM is in RAM), so a queue that only grows
// would end in an out-of-memory kill of all nodes at about the same time;
// refusing enqueues with ResourceExhausted turns that into back-pressure
// producers can see, while consumers keep draining. The heap is read with
// runtime/metrics, which does not stop the world.
type memoryGuard struct {
	limit   atomic.Int64 // <= 0: off
	rejects prometheus.Counter
}

func newMemoryGuard(limit int64, rejects prometheus.Counter) *memoryGuard {
	g := &memoryGuard{rejects: rejects}
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

func (g *memoryGuard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if addsMessages(info.FullMethod) {
		if err := g.check(); err != nil {
			return nil, err
		}
	}
	return h(ctx, req)
}

// stream guards every request of a stream that adds messages, as it
// arrives: a refused request ends the stream with the error.
func (g *memoryGuard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if addsMessages(info.FullMethod) {
		ss = guardedStream{ServerStream: ss, g: g}
	}
	return h(srv, ss)
}

type guardedStream struct {
	grpc.ServerStream
	g *memoryGuard
}

func (s guardedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.g.check()
}

// check is the memory guard's refusal, or nil while the heap is under the
// limit (or the guard is off).
func (g *memoryGuard) check() error {
	if limit := g.limit.Load(); limit > 0 {
		if heap := heapBytes(); heap > limit {
			g.rejects.Inc()
			return status.Error(codes.ResourceExhausted,
				"memory guard: heap holds "+strconv.FormatInt(heap, 10)+" bytes, limit is "+strconv.FormatInt(limit, 10)+
					" (--memory-limit); enqueues are refused until consumers drain queues")
		}
	}
	return nil
}

func addsMessages(method string) bool {
	return method == "/quorumq.v1.Queue/Enqueue" || method == "/quorumq.v1.Queue/EnqueueStream" || method == "/quorumq.v1.Queue/Transaction"
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
