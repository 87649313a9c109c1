package cluster

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// diskGuard refuses calls that add data (addsData) while this node is the
// leader and its data dir's file system has less free space than the
// threshold (Config.MinFreeDisk or MinFreeDiskPercent). The refusal comes
// before anything is proposed, so a full disk stops the backlog from
// growing while receives, acks, nacks, extends, deletes and purges go on
// and consumers can drain it: those add log entries too, but small ones,
// and a drain is what frees the space.
//
// Only the leader refuses: it proposes, and with its quorum the entry is
// stored whatever one follower's disk holds. A follower that refused
// would turn the redirect a client needs into an error. A follower whose
// disk is low says so on /readyz, and one whose log writes fail catches
// up once it has room again (pipeline.go).
//
// The free space is read with statfs at most once per diskReadEvery and
// the reading shared by every call, so a busy node does not make a
// system call per request, and a decision rests on a reading at most
// that old. The same reading serves /readyz and the metrics.
type diskGuard struct {
	dir      string
	isLeader func() bool
	rejects  prometheus.Counter
	segment  int64 // Config.WALSegmentSize: the default threshold keeps two

	mu       sync.Mutex
	minBytes int64   // > 0: the threshold in bytes
	percent  float64 // > 0 (minBytes 0): the threshold as a share of the file system's size
	off      bool    // no threshold; neither set nor off: defaultMinFreeDisk
	readAt   time.Time
	space    diskSpace
}

// diskReadEvery bounds the age of the free-space reading the guard decides on.
const diskReadEvery = 250 * time.Millisecond

// defaultMinFreeDisk is the threshold of a file system of size bytes
// when none is configured: 5 % of it, at least two wal segments of
// segment bytes (128 MiB with the default size), at most a quarter of it.
//
// A share rather than a number of bytes, because what a node still
// writes once enqueues are refused grows with the data it holds and so
// does the disk it is given: a snapshot of the state (written before
// the older one is removed), the log until that snapshot compacts it,
// the entries of the enqueues already admitted. 5 % is also where
// Elasticsearch stops writes by default (its flood-stage watermark).
// The floor is two raft-wal segments: acks and receives keep appending
// once enqueues are refused, and a segment rotation needs a segment's
// size free for the next segment's preallocation (64 MiB by default),
// which 5 % of a volume under 1.3 GiB would not leave. The cap keeps the
// floor from refusing every enqueue on a small test volume (a 128 MiB
// tmpfs holding one 64 MiB segment keeps 32 MiB).
func defaultMinFreeDisk(size, segment int64) int64 {
	return min(max(size/20, 2*segment), size/4)
}

// diskSpace is one statfs reading of the data dir's file system.
type diskSpace struct {
	free, size int64 // bytes available to this process, bytes in all
	err        error
}

var (
	descDiskFree = prometheus.NewDesc("quorumq_disk_free_bytes",
		"Bytes free for this server on the data dir's file system (statfs, at most 250 ms old).", nil, nil)
	descDiskMinFree = prometheus.NewDesc("quorumq_disk_min_free_bytes",
		"The --min-free-disk threshold in bytes: below it, the leader refuses enqueues and queue creation and /readyz is 503.", nil, nil)
)

// newDiskGuard guards dir with cfg's threshold and registers its series
// on reg.
func newDiskGuard(cfg Config, isLeader func() bool, reg prometheus.Registerer) *diskGuard {
	g := &diskGuard{
		dir:      cfg.DataDir,
		isLeader: isLeader,
		segment:  cfg.WALSegmentSize,
		rejects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quorumq_disk_guard_rejects_total",
			Help: "Calls that add data (enqueue, transaction, queue creation) this leader refused with ResourceExhausted because its data dir had less free space than --min-free-disk.",
		}),
	}
	if g.segment == 0 {
		g.segment = defaultWALSegmentSize
	}
	g.set(cfg.MinFreeDisk, cfg.MinFreeDiskPercent)
	reg.MustRegister(g.rejects, diskCollector{g})
	return g
}

// set changes the threshold: bytes when positive, else percent of the
// file system's size; bytes negative is no threshold.
func (g *diskGuard) set(bytes int64, percent float64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.minBytes, g.percent, g.off = max(bytes, 0), percent, bytes < 0
}

// read returns the reading of the free space, taken anew when the last
// one is older than diskReadEvery, with the threshold it is held to.
func (g *diskGuard) read() diskReading {
	g.mu.Lock()
	defer g.mu.Unlock()
	if now := time.Now(); now.Sub(g.readAt) >= diskReadEvery {
		var st syscall.Statfs_t
		if err := syscall.Statfs(g.dir, &st); err != nil {
			g.space = diskSpace{err: fmt.Errorf("free space of data dir %s unknown: %w", g.dir, err)}
		} else {
			g.space = diskSpace{free: int64(st.Bavail) * st.Bsize, size: int64(st.Blocks) * st.Bsize}
		}
		g.readAt = now
	}
	r := diskReading{diskSpace: g.space, min: -1, percent: g.percent}
	switch {
	case g.off:
	case g.minBytes > 0:
		r.min, r.percent = g.minBytes, 0
	case g.percent > 0:
		r.min = int64(g.percent / 100 * float64(g.space.size))
	default:
		r.min, r.auto, r.segment = defaultMinFreeDisk(g.space.size, g.segment), true, g.segment
	}
	return r
}

// diskReading is a reading and the threshold in force: min bytes (-1:
// none), percent of the size when that is how it was set, auto when it
// is the default.
type diskReading struct {
	diskSpace
	min     int64
	percent float64
	auto    bool
	segment int64 // with auto: the wal segment size its floor is two of
}

// check returns why the data dir has too little free space (low), or why
// its free space is unknown (unknown); both nil when it has enough.
func (g *diskGuard) check() (low, unknown error) {
	r := g.read()
	switch {
	case r.min < 0:
		return nil, nil
	case r.err != nil:
		return nil, r.err
	case r.free >= r.min:
		return nil, nil
	}
	what := "--min-free-disk"
	switch {
	case r.percent > 0:
		what = strconv.FormatFloat(r.percent, 'f', -1, 64) + "% of its " + strconv.FormatInt(r.size, 10) + " bytes, --min-free-disk"
	case r.auto:
		what = "--min-free-disk auto: 5% of its " + strconv.FormatInt(r.size, 10) + " bytes, at least two wal segments of " + strconv.FormatInt(r.segment, 10) + " bytes, at most a quarter"
	}
	return fmt.Errorf("data dir %s has %d bytes free, less than %d (%s)", g.dir, r.free, r.min, what), nil
}

// admit returns the guard's refusal while this node is the leader and its
// disk is low. A file system whose free space cannot be read refuses
// nothing: /readyz reports it.
func (g *diskGuard) admit() error {
	if !g.isLeader() {
		return nil
	}
	if low, _ := g.check(); low != nil {
		g.rejects.Inc()
		return status.Error(codes.ResourceExhausted, "disk guard: "+low.Error()+
			"; enqueues and queue creation are refused until space is freed, receives, acks and purges still work")
	}
	return nil
}

// addsData reports whether method adds data to the cluster: the calls
// the memory guard guards (addsMessages), and queue creation.
func addsData(method string) bool {
	return addsMessages(method) || method == "/quorumq.v1.Queue/CreateQueue"
}

// tap refuses a call that adds data before gRPC reads its message.
func (g *diskGuard) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if addsData(info.FullMethodName) {
		return ctx, g.admit()
	}
	return ctx, nil
}

// unary refuses a call that adds data; tap already refused most, this
// catches the disk running low while the message was read.
func (g *diskGuard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if addsData(info.FullMethod) {
		if err := g.admit(); err != nil {
			return nil, err
		}
	}
	return h(ctx, req)
}

// stream checks every request of a stream that adds data as it arrives:
// a refused request ends the stream with the refusal.
func (g *diskGuard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if !addsData(info.FullMethod) {
		return h(srv, ss)
	}
	return h(srv, diskGuardedStream{ServerStream: ss, g: g})
}

type diskGuardedStream struct {
	grpc.ServerStream
	g *diskGuard
}

func (s diskGuardedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.g.admit()
}

// diskCollector reports the guard's reading and threshold at scrape time.
type diskCollector struct{ g *diskGuard }

func (c diskCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descDiskFree
	ch <- descDiskMinFree
}

func (c diskCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.g.read()
	if r.err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(descDiskFree, prometheus.GaugeValue, float64(r.free))
	if r.min >= 0 {
		ch <- prometheus.MustNewConstMetric(descDiskMinFree, prometheus.GaugeValue, float64(r.min))
	}
}
