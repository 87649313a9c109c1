package cluster

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	walmetrics "github.com/hashicorp/raft-wal/metrics"
	"github.com/hashicorp/raft-wal/verifier"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/quorumq/quorumq/fsm"
	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// metrics holds the series a node updates as things happen. Everything
// that is a state (queue depths, Raft indices, bolt stats) is read at
// scrape time by nodeCollector instead, so a scrape always shows the
// current value and nothing has to be kept in step by hand.
//
// Each node has its own registry (not prometheus' global one), so several
// nodes in one process (tests, `quorumq dev`) do not collide.
type metrics struct {
	reg *prometheus.Registry

	rpcDuration      *prometheus.HistogramVec // method, code
	applyDuration    prometheus.Histogram
	leaderChanges    prometheus.Counter
	snapshotDuration prometheus.Histogram
	snapshotSize     prometheus.Gauge
	nacked           *prometheus.CounterVec // queue
	memoryRejects    prometheus.Counter
	memoryReserved   prometheus.Gauge
	refusals         *prometheus.CounterVec // code
	raftConnsRefused *prometheus.CounterVec // reason
	raftRPCsRefused  *prometheus.CounterVec // rpc
	// walFsync is registered on a node whose log store is the wal only.
	walFsync prometheus.Histogram
}

func newMetrics(n *Node) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		rpcDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "quorumq_rpc_duration_seconds",
			Help:    "gRPC API calls served by this node, by method and status code.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16), // 0.5 ms .. 16 s
		}, []string{"method", "code"}),
		applyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "quorumq_raft_apply_duration_seconds",
			Help:    "Time from submitting a command to Raft until a quorum stored it and this leader applied it.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16),
		}),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quorumq_raft_leader_changes_total",
			Help: "Times this node saw a new leader (itself included).",
		}),
		snapshotDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "quorumq_raft_snapshot_persist_seconds",
			Help:    "Time to write one FSM snapshot to the snapshot store.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		snapshotSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "quorumq_raft_snapshot_size_bytes",
			Help: "Bytes the last FSM snapshot of this node wrote: its index and the segment files it did not link from the snapshot before.",
		}),
		nacked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quorumq_messages_nacked_total",
			Help: "Messages released by a successful nack on this node (as leader).",
		}, []string{"queue"}),
		memoryRejects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quorumq_memory_guard_rejects_total",
			Help: "Enqueues refused with ResourceExhausted because the heap, the bytes reserved by enqueues in flight and the request's own cost would exceed the memory limit.",
		}),
		memoryReserved: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "quorumq_memory_guard_reserved_bytes",
			Help: "Bytes the memory guard holds for enqueues it admitted and that are still being served (their Raft round not yet over), counted against the memory limit with the heap.",
		}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quorumq_command_refusals_total",
			Help: "Commands this node, as leader, answered with an error of the state machine (nothing applied), by error code; OUT_OF_ORDER counts pipelined batches sent again behind their predecessor.",
		}, []string{"code"}),
		raftConnsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quorumq_raft_connections_refused_total",
			Help: "Connections to the Raft port closed at accept, by reason: a cap was full (max-conns, max-conns-per-ip), or, without mutual TLS, the remote IP is no known server's (not-a-peer).",
		}, []string{"reason"}),
		raftRPCsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quorumq_raft_rpcs_refused_total",
			Help: "Raft RPCs refused before raft saw them because, without mutual TLS, the sender's ID and address are no known server's, by rpc (append_entries, heartbeat, request_vote, request_pre_vote, install_snapshot, timeout_now).",
		}, []string{"rpc"}),
		walFsync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "quorumq_wal_fsync_duration_seconds",
			Help:    "fsyncs of wal segment files (one per appended Raft batch, plus one of the directory for each new segment).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16), // 0.1 ms .. 3.3 s
		}),
	}
	m.reg.MustRegister(m.rpcDuration, m.applyDuration, m.leaderChanges, m.snapshotDuration, m.snapshotSize,
		m.nacked, m.memoryRejects, m.memoryReserved, m.refusals, m.raftConnsRefused, m.raftRPCsRefused, &nodeCollector{n: n},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// unary records the duration and status code of every unary call, and
// counts the messages a nack released.
func (m *metrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	m.rpcDuration.WithLabelValues(methodName(info.FullMethod), status.Code(err).String()).Observe(time.Since(start).Seconds())
	if nr, ok := resp.(*quorumqpb.NackResponse); ok && err == nil {
		ok := 0
		for _, o := range nr.GetOutcomes() {
			if o == fsmpb.AckOutcome_ACK_OK {
				ok++
			}
		}
		m.nacked.WithLabelValues(req.(*quorumqpb.NackRequest).GetQueue()).Add(float64(ok))
	}
	return resp, err
}

func (m *metrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	start := time.Now()
	err := h(srv, ss)
	m.rpcDuration.WithLabelValues(methodName(info.FullMethod), status.Code(err).String()).Observe(time.Since(start).Seconds())
	return err
}

// methodName turns "/quorumq.v1.Queue/Enqueue" into "Queue/Enqueue".
func methodName(full string) string {
	full = strings.TrimPrefix(full, "/")
	if i := strings.LastIndex(full, "/"); i >= 0 {
		if j := strings.LastIndex(full[:i], "."); j >= 0 {
			return full[j+1:]
		}
	}
	return full
}

// observeLeader is a raft observer filter: it counts leader changes and
// lets nothing through, so no goroutine has to drain a channel.
func (m *metrics) observeLeader(o *raft.Observation) bool {
	if lo, ok := o.Data.(raft.LeaderObservation); ok && lo.LeaderID != "" {
		m.leaderChanges.Inc()
	}
	return false
}

// observedFSM is the FSM raft sees: the real one, with snapshots timed and
// measured, marked as the node's own for the snapshot store, which
// refuses received snapshots behind the applied state (snapshotstore.go),
// and the time of every applied command given to the node's cluster time
// as its anchor (the FSM itself reads no clock). It embeds *fsm.FSM, so
// raft still finds ApplyBatch.
type observedFSM struct {
	*fsm.FSM
	m       *metrics
	ct      *clusterTime
	bodies  *bodyStore
	snapDir string
	budget  *logBudget
}

// Restore restores a package (a snapshot with a checkpoint of the body
// store, checkpoint.go) into the FSM and the body store, and any other
// snapshot through the FSM.
func (o observedFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	br := bufio.NewReaderSize(rc, 1<<20)
	if isPackage(br) {
		return restorePackage(br, o.FSM, o.bodies, o.snapDir)
	}
	return o.FSM.Restore(io.NopCloser(br))
}

func (o observedFSM) Apply(l *raft.Log) interface{} {
	res := o.FSM.Apply(l)
	o.budget.applied(len(l.Data))
	if l.Type == raft.LogCommand && !fsm.IsCheckpoint(l.Data) { // a checkpoint carries no time
		o.ct.applied(o.FSM.NowUnixNano())
	}
	return res
}

func (o observedFSM) Snapshot() (raft.FSMSnapshot, error) {
	s, err := o.FSM.Snapshot()
	if err != nil {
		return nil, err
	}
	o.budget.snapshotted()
	return observedSnapshot{FSMSnapshot: s, m: o.m, budget: o.budget, log: o.log()}, nil
}

func (o observedFSM) log() *slog.Logger {
	if o.bodies != nil {
		return o.bodies.log
	}
	return slog.New(slog.DiscardHandler)
}

type observedSnapshot struct {
	raft.FSMSnapshot
	m      *metrics
	budget *logBudget
	log    *slog.Logger
}

func (s observedSnapshot) Persist(sink raft.SnapshotSink) error {
	markOwnSnapshot(sink)
	start := time.Now()
	cs := &countingSink{SnapshotSink: sink}
	err := s.FSMSnapshot.Persist(cs)
	if err == nil {
		s.m.snapshotDuration.Observe(time.Since(start).Seconds())
		s.m.snapshotSize.Set(float64(cs.n))
		s.budget.lastSnapshot.Store(uint64(cs.n))
		s.log.Info("snapshot written", "bytes", cs.n, "took", time.Since(start).Round(time.Millisecond))
	}
	return err
}

type countingSink struct {
	raft.SnapshotSink
	n int64
}

// CheckpointDir passes the sink's checkpoint directory on (fsm.CheckpointSink).
func (c *countingSink) CheckpointDir() string {
	if cs, ok := c.SnapshotSink.(fsm.CheckpointSink); ok {
		return cs.CheckpointDir()
	}
	return ""
}

// CreateSegment passes segment files on (fsm.SegmentSink), counting what
// they are written.
func (c *countingSink) CreateSegment(name string) (io.WriteCloser, error) {
	ss, ok := c.SnapshotSink.(fsm.SegmentSink)
	if !ok {
		return nil, errors.New("the snapshot sink keeps no segment files")
	}
	w, err := ss.CreateSegment(name)
	if err != nil {
		return nil, err
	}
	return &countingWriter{WriteCloser: w, n: &c.n}, nil
}

// LinkSegment passes links of segment files on (fsm.SegmentSink).
func (c *countingSink) LinkSegment(name string) bool {
	ss, ok := c.SnapshotSink.(fsm.SegmentSink)
	return ok && ss.LinkSegment(name)
}

type countingWriter struct {
	io.WriteCloser
	n *int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.WriteCloser.Write(p)
	*c.n += int64(n)
	return n, err
}

func (c *countingSink) Write(p []byte) (int, error) {
	n, err := c.SnapshotSink.Write(p)
	c.n += int64(n)
	return n, err
}

// nodeCollector reads the current state at scrape time: per-queue depths
// and counters from this node's FSM (every node has the replicated state,
// so any node can be scraped), Raft's role and indices, and the stats of
// the node's log store: bolt's on a bolt node, the wal's on a wal node
// (the other store's series are absent).
type nodeCollector struct{ n *Node }

var (
	descQueueMessages = prometheus.NewDesc("quorumq_queue_messages",
		"Messages in a queue by state (ready, leased, delayed, waiting behind an earlier message of their group, dead_lettered, dead), as applied on this node.",
		[]string{"queue", "state"}, nil)
	queueCounters = []struct {
		desc *prometheus.Desc
		get  func(*fsmpb.QueueStats) uint64
	}{
		{counterDesc("enqueued", "Messages enqueued (dedup hits not counted)."), (*fsmpb.QueueStats).GetEnqueuedTotal},
		{counterDesc("delivered", "Deliveries handed out by receives (first deliveries and redeliveries)."), (*fsmpb.QueueStats).GetDeliveredTotal},
		{counterDesc("acked", "Messages acked."), (*fsmpb.QueueStats).GetAckedTotal},
		{counterDesc("redelivered", "Deliveries of a message that had been delivered before."), (*fsmpb.QueueStats).GetRedeliveredTotal},
		{counterDesc("dedup_hits", "Enqueues answered from the dedup table (nothing enqueued)."), (*fsmpb.QueueStats).GetDedupHitsTotal},
		{counterDesc("expired", "Messages removed by retention."), (*fsmpb.QueueStats).GetExpiredTotal},
		{counterDesc("dead_lettered", "Messages moved to the dead-letter queue after max deliveries or a reject (or dropped, under the rules of an earlier release)."), (*fsmpb.QueueStats).GetDeadLetteredTotal},
		{counterDesc("purged", "Messages removed by purge."), (*fsmpb.QueueStats).GetPurgedTotal},
		{counterDesc("redriven", "Messages moved out of the queue by redrive."), (*fsmpb.QueueStats).GetRedrivenTotal},
	}
	descQueueGroups = prometheus.NewDesc("quorumq_queue_groups",
		"Message groups with a message in a queue, as applied on this node.",
		[]string{"queue"}, nil)
	descQueueOldestReady = prometheus.NewDesc("quorumq_queue_oldest_ready_age_seconds",
		"Age of the oldest ready message of a queue (0 when none is ready), of the state applied on this node, measured at its cluster time: how far the queue's consumers are behind.",
		[]string{"queue"}, nil)
	descRaftState      = prometheus.NewDesc("quorumq_raft_state", "1 for this node's current Raft role.", []string{"state"}, nil)
	descRaftTerm       = prometheus.NewDesc("quorumq_raft_term", "Current Raft term.", nil, nil)
	descRaftCommit     = prometheus.NewDesc("quorumq_raft_commit_index", "Highest log index known to be committed.", nil, nil)
	descRaftApplied    = prometheus.NewDesc("quorumq_raft_applied_index", "Highest log index applied to the FSM.", nil, nil)
	descRaftLastLog    = prometheus.NewDesc("quorumq_raft_last_log_index", "Last index in the local log.", nil, nil)
	descRaftLastSnap   = prometheus.NewDesc("quorumq_raft_last_snapshot_index", "Index covered by the latest snapshot.", nil, nil)
	descRaftReady      = prometheus.NewDesc("quorumq_leader_ready", "1 while this node is leader and has applied every earlier entry (serves reads).", nil, nil)
	descBoltFreePages  = prometheus.NewDesc("quorumq_bolt_free_pages", "Free pages on the raft.db freelist.", nil, nil)
	descBoltPending    = prometheus.NewDesc("quorumq_bolt_pending_pages", "Pending pages on the raft.db freelist.", nil, nil)
	descBoltFreeAlloc  = prometheus.NewDesc("quorumq_bolt_free_alloc_bytes", "Bytes allocated in free pages of raft.db.", nil, nil)
	descBoltFreelist   = prometheus.NewDesc("quorumq_bolt_freelist_inuse_bytes", "Bytes used by the raft.db freelist.", nil, nil)
	descBoltReadTx     = prometheus.NewDesc("quorumq_bolt_read_tx_total", "Read transactions started on raft.db.", nil, nil)
	descBoltOpenReadTx = prometheus.NewDesc("quorumq_bolt_open_read_tx", "Read transactions open on raft.db.", nil, nil)
	descBoltWrites     = prometheus.NewDesc("quorumq_bolt_writes_total", "Page writes to raft.db.", nil, nil)
	descBoltWriteSecs  = prometheus.NewDesc("quorumq_bolt_write_seconds_total", "Time spent writing raft.db pages.", nil, nil)
	descBoltFileBytes  = prometheus.NewDesc("quorumq_bolt_file_bytes", "Size of raft.db on disk.", nil, nil)
	descClockOffset    = prometheus.NewDesc("quorumq_clock_offset_seconds",
		"Wall clock of each voter (this node included) minus this node's cluster time, read in gossip ping acks (to about 250 ms); on the leader, the clocks cluster time follows by majority.",
		[]string{"node"}, nil)
)

// walCounterDescs and walGaugeDescs export raft-wal's own metrics
// (wal.MetricDefinitions: appends, entries and bytes written and read,
// segment rotations, truncations, stable store calls) as
// quorumq_wal_<name>_total and quorumq_wal_<name>.
var walCounterDescs, walGaugeDescs = collectorDescs("quorumq_wal_", "raft-wal: ", wal.MetricDefinitions)

// verifierCounterDescs export the log verifier's counters
// (verifier.MetricDefinitions: checkpoints written, ranges verified, read
// and write checksum failures, dropped reports; logverify.go) as
// quorumq_log_verifier_<name>_total, on every node whatever its store.
var verifierCounterDescs, _ = collectorDescs("quorumq_log_verifier_", "log verifier: ", verifier.MetricDefinitions)

// collectorDescs describes the metrics of one of raft-wal's collectors
// (defs) as prefix<name>_total (counters) and prefix<name> (gauges).
func collectorDescs(prefix, help string, defs walmetrics.Definitions) (counters, gauges map[string]*prometheus.Desc) {
	counters, gauges = map[string]*prometheus.Desc{}, map[string]*prometheus.Desc{}
	for _, d := range defs.Counters {
		counters[d.Name] = prometheus.NewDesc(prefix+d.Name+"_total", help+d.Desc, nil, nil)
	}
	for _, d := range defs.Gauges {
		gauges[d.Name] = prometheus.NewDesc(prefix+d.Name, help+d.Desc, nil, nil)
	}
	return counters, gauges
}

// collectSummary sends what one of raft-wal's collectors counted as the
// series counters and gauges describe.
func collectSummary(ch chan<- prometheus.Metric, sum walmetrics.Summary, counters, gauges map[string]*prometheus.Desc) {
	for name, v := range sum.Counters {
		ch <- prometheus.MustNewConstMetric(counters[name], prometheus.CounterValue, float64(v))
	}
	for name, v := range sum.Gauges {
		ch <- prometheus.MustNewConstMetric(gauges[name], prometheus.GaugeValue, float64(v))
	}
}

func counterDesc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc("quorumq_queue_"+name+"_total", help, []string{"queue"}, nil)
}

// Describe lists every series up front (the node's stores do not exist
// yet when the collector is registered).
func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, qc := range queueCounters {
		ch <- qc.desc
	}
	for _, d := range []*prometheus.Desc{
		descQueueMessages, descQueueGroups, descRaftState, descRaftTerm, descRaftCommit, descRaftApplied, descRaftLastLog,
		descRaftLastSnap, descRaftReady, descBoltFreePages, descBoltPending, descBoltFreeAlloc, descBoltFreelist,
		descBoltReadTx, descBoltOpenReadTx, descBoltWrites, descBoltWriteSecs, descBoltFileBytes, descClockOffset,
	} {
		ch <- d
	}
	for _, d := range walCounterDescs {
		ch <- d
	}
	for _, d := range walGaugeDescs {
		ch <- d
	}
	for _, d := range verifierCounterDescs {
		ch <- d
	}
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	if n.closed.Load() {
		return // the stores may be closed; a scrape during shutdown gets the event series only
	}
	queues := n.fsm.Queues() // sorted by name
	n.ageNow(queues...)
	for _, q := range queues[:min(len(queues), maxQueueSeries)] {
		collectQueue(ch, q.GetName(), q.GetStats())
	}
	if len(queues) > maxQueueSeries {
		other := &fsmpb.QueueStats{}
		for _, q := range queues[maxQueueSeries:] {
			addStats(other, q.GetStats())
		}
		collectQueue(ch, otherQueues, other)
	}

	state := n.raft.State()
	for _, s := range []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown} {
		v := 0.0
		if s == state {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descRaftState, prometheus.GaugeValue, v, strings.ToLower(s.String()))
	}
	stats := n.raft.Stats()
	u := func(k string) float64 { v, _ := strconv.ParseUint(stats[k], 10, 64); return float64(v) }
	ch <- prometheus.MustNewConstMetric(descRaftTerm, prometheus.GaugeValue, u("term"))
	ch <- prometheus.MustNewConstMetric(descRaftCommit, prometheus.GaugeValue, u("commit_index"))
	ch <- prometheus.MustNewConstMetric(descRaftApplied, prometheus.GaugeValue, float64(n.raft.AppliedIndex()))
	ch <- prometheus.MustNewConstMetric(descRaftLastLog, prometheus.GaugeValue, u("last_log_index"))
	ch <- prometheus.MustNewConstMetric(descRaftLastSnap, prometheus.GaugeValue, u("last_snapshot_index"))
	ready := 0.0
	if n.ready.Load() {
		ready = 1
	}
	ch <- prometheus.MustNewConstMetric(descRaftReady, prometheus.GaugeValue, ready)
	for _, o := range n.clockOffsets() {
		ch <- prometheus.MustNewConstMetric(descClockOffset, prometheus.GaugeValue, time.Duration(o.GetOffsetNs()).Seconds(), o.GetId())
	}

	if n.store.walMetrics != nil {
		collectSummary(ch, n.store.walMetrics.Summary(), walCounterDescs, walGaugeDescs)
	}
	collectSummary(ch, n.verify.metrics.Summary(), verifierCounterDescs, nil)
	if n.store.bolt == nil {
		return
	}
	bs := n.store.bolt.Stats()
	ch <- prometheus.MustNewConstMetric(descBoltFreePages, prometheus.GaugeValue, float64(bs.FreePageN))
	ch <- prometheus.MustNewConstMetric(descBoltPending, prometheus.GaugeValue, float64(bs.PendingPageN))
	ch <- prometheus.MustNewConstMetric(descBoltFreeAlloc, prometheus.GaugeValue, float64(bs.FreeAlloc))
	ch <- prometheus.MustNewConstMetric(descBoltFreelist, prometheus.GaugeValue, float64(bs.FreelistInuse))
	ch <- prometheus.MustNewConstMetric(descBoltReadTx, prometheus.CounterValue, float64(bs.TxN))
	ch <- prometheus.MustNewConstMetric(descBoltOpenReadTx, prometheus.GaugeValue, float64(bs.OpenTxN))
	ch <- prometheus.MustNewConstMetric(descBoltWrites, prometheus.CounterValue, float64(bs.TxStats.GetWrite()))
	ch <- prometheus.MustNewConstMetric(descBoltWriteSecs, prometheus.CounterValue, bs.TxStats.GetWriteTime().Seconds())
	if fi, err := os.Stat(filepath.Join(n.cfg.DataDir, raftDBFile)); err == nil {
		ch <- prometheus.MustNewConstMetric(descBoltFileBytes, prometheus.GaugeValue, float64(fi.Size()))
	}
}

// maxQueueSeries bounds the queues a scrape reports one by one: the first
// ones by name (a stable choice, so a queue's counters do not jump between
// its own series and the sum); the others are summed into one series with
// the label otherQueues, which no queue can be named.
const (
	maxQueueSeries = 1000
	otherQueues    = "(other)"
)

func collectQueue(ch chan<- prometheus.Metric, name string, st *fsmpb.QueueStats) {
	for _, s := range []struct {
		state string
		v     uint64
	}{{"ready", st.GetReady()}, {"leased", st.GetLeased()}, {"delayed", st.GetDelayed()}, {"waiting", st.GetWaiting()}, {"dead_lettered", st.GetDeadLettered()}, {"dead", st.GetDead()}} {
		ch <- prometheus.MustNewConstMetric(descQueueMessages, prometheus.GaugeValue, float64(s.v), name, s.state)
	}
	ch <- prometheus.MustNewConstMetric(descQueueGroups, prometheus.GaugeValue, float64(st.GetGroups()), name)
	ch <- prometheus.MustNewConstMetric(descQueueOldestReady, prometheus.GaugeValue, time.Duration(st.GetOldestReadyAgeNs()).Seconds(), name)
	for _, qc := range queueCounters {
		ch <- prometheus.MustNewConstMetric(qc.desc, prometheus.CounterValue, float64(qc.get(st)), name)
	}
}

// addStats adds each of b's depths and counters (every uint64 field) to
// a; the oldest ready age of the sum is the oldest of both.
func addStats(a, b *fsmpb.QueueStats) {
	ar := a.ProtoReflect()
	b.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() == protoreflect.Uint64Kind {
			ar.Set(fd, protoreflect.ValueOfUint64(ar.Get(fd).Uint()+v.Uint()))
		}
		return true
	})
	a.OldestReadyAgeNs = max(a.GetOldestReadyAgeNs(), b.GetOldestReadyAgeNs())
}
