// Package cluster runs one quorumq server: hashicorp/raft over raft-wal
// (raft-boltdb for data dirs made on it) and a file snapshot store,
// replicating the fsm package's state machine;
// memberlist gossip for discovery, bootstrap and joins; and the gRPC API
// (the transport package's Queue service plus this package's Cluster
// service). It also enforces the operator's controls on that API (bearer
// tokens with scopes, the memory guard, the in-flight limit), serves the
// admin HTTP endpoint (Prometheus metrics, /healthz, /readyz) and takes
// backups and restores from them.
//
// Every raft future is waited on with a deadline of our own, because a
// future can hang while there is no quorum. Only the leader proposes; it
// stamps each command with cluster time (clustertime.go: monotonic from
// the last applied command, outvoting any one node's wall clock) and
// proposes a periodic tick. Long
// polls wait on the FSM's notifications, not on Raft entries. See DESIGN.md
// beside this file for the decisions and their trade-offs.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/tap"

	"github.com/quorumq/quorumq/fsm"
	"github.com/quorumq/quorumq/transport"
	"github.com/quorumq/quorumq/transport/raftnet"
	"github.com/quorumq/quorumq/transport/wire"
)

// Node is one running quorumq server.
//
// It is the transport.Backend of the Queue service.
type Node struct {
	cfg Config
	log *slog.Logger

	fsm   *fsm.FSM
	raft  *raft.Raft
	trans *raft.NetworkTransport
	// raftLayer is the stream layer under trans; admission dials members'
	// Raft ports through it to check their certificates.
	raftLayer *raftnet.Layer
	proofs    proofCache
	store     *logStore
	verify    *logVerification // the verifier over store (logverify.go)
	storeKind string           // LogStoreWAL or LogStoreBolt: what the data dir holds
	logs      raft.LogStore    // what raft reads and writes: store under the cache and the read checks
	snaps     *raft.FileSnapshotStore
	bodies    *bodyStore     // the FSM's message bodies (bodystore.go)
	snapStore *snapshotStore // what raft uses: n.snaps with checkpoints packed (checkpoint.go)
	budget    *logBudget     // bytes applied since the last snapshot (logbudget.go)

	ml         *memberlist.Memberlist
	members    *members
	delegate   *metaDelegate
	gossipAddr string
	features   featureGate

	grpc *grpc.Server
	// unary holds the services the HTTP API calls in process.
	unary   *transport.UnaryMethods
	apiLn   net.Listener
	apiAddr string // advertised
	raftAdv string

	// ctime is this node's estimate of cluster time (clustertime.go).
	ctime *clusterTime
	// voterIDs caches the voters of the latest configuration (voters).
	votersMu sync.Mutex
	voterIDs []string
	votersAt time.Duration

	metrics  *metrics
	guard    *memoryGuard
	disk     *diskGuard
	http     *http.Server // the HTTP/JSON API (httpapi.go); nil without HTTPAddr
	httpAddr string
	forward  leaderForwarder
	admin    *http.Server // /metrics, /healthz, /readyz; nil without AdminAddr
	adminLn  net.Listener

	// ready is true while this node is leader and has applied every entry
	// of earlier terms (a barrier after winning the election), so reads and
	// long polls on it see every acknowledged write.
	ready atomic.Bool
	// removed maps a server an admin removed while this node was leader
	// to the boot ID it gossiped then: that process is not re-added even
	// if it still gossips as fresh; a new boot of the server (wiped and
	// restarted) is.
	removedMu sync.Mutex
	removed   map[string]string
	// olderWarned holds "id/boot" of fresh servers of an older release
	// the leader has warned about and does not add (reconcile).
	olderWarned sync.Map

	stop     chan struct{} // closed when the node stops
	wg       sync.WaitGroup
	stopOnce sync.Once
	closed   atomic.Bool
}

var _ transport.Backend = (*Node)(nil)

// Start opens the data dir, starts Raft, gossip and the gRPC API, and
// returns once every listener is up. It does not wait for a leader (see
// WaitLeader). A data dir that is corrupt or belongs to another node is
// refused with an error naming the file.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	n := &Node{
		cfg:      cfg,
		log:      cfg.Logger.With("node", cfg.NodeID),
		removed:  map[string]string{},
		stop:     make(chan struct{}),
		delegate: &metaDelegate{},
	}
	n.ctime = newClusterTime(cfg.Clock, cfg.NodeID, n.log)
	n.metrics = newMetrics(n)
	n.members = newMembers(func(node string, err error) { n.log.Warn("ignoring gossip member", "member", node, "err", err) })
	ok := false
	defer func() {
		if !ok {
			n.teardown()
		}
	}()

	newDir, err := prepareDataDir(cfg.DataDir, cfg.NodeID)
	if err != nil {
		return nil, err
	}
	if n.storeKind, err = n.chooseLogStore(); err != nil {
		return nil, err
	}
	if !newDir {
		// raft.db, or the wal's meta DB: both are bolt files. The meta
		// page check comes first: bbolt faults on a truncated file.
		if err := checkBoltFile(n.boltFile()); err != nil {
			return nil, err
		}
		if err := checkBoltPages(n.boltFile()); err != nil {
			return nil, err
		}
	}
	opening := time.Now()
	if err := n.openStores(); err != nil {
		return nil, err
	}
	if !newDir {
		opened := time.Now()
		if err := n.verifyStores(); err != nil { // datacheck.go
			return nil, err
		}
		n.log.Info("stores opened and checked", "open", opened.Sub(opening).Round(time.Millisecond), "check", time.Since(opened).Round(time.Millisecond))
	}
	if newDir {
		if err := writeIdentity(cfg.DataDir, cfg.NodeID); err != nil {
			return nil, err
		}
	}
	hasState, err := raft.HasExistingState(n.store.LogStore, n.store.stable, n.snaps)
	if err != nil {
		return nil, fmt.Errorf("read raft state in %s: %w", cfg.DataDir, err)
	}
	if cfg.RestoreFrom != "" && hasState {
		return nil, configErr("restore from %s: data dir %s already has Raft state; a restore starts a new cluster from an empty data dir", cfg.RestoreFrom, cfg.DataDir)
	}

	// The API listener first: a bad API address fails before raft starts.
	if err := n.startAPI(); err != nil {
		return nil, err
	}
	if err := n.startRaft(); err != nil {
		return nil, err
	}
	hasState = hasState || cfg.RestoreFrom != ""
	features := supportedFeatures
	if cfg.features != nil {
		features = cfg.features
	}
	n.delegate.meta = nodeMeta{ID: cfg.NodeID, Raft: n.raftAdv, API: n.apiAddr, Fresh: !hasState, Boot: newBootID(), Features: features}
	if err := n.startGossip(); err != nil {
		return nil, err
	}
	if err := n.startAdmin(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	n.wg.Add(6)
	go n.budgetLoop()
	go n.storeLoop()
	go n.joinLoop()
	go n.serveAPI()
	go n.leaderLoop()
	go n.membershipLoop(!hasState)
	ok = true
	for _, e := range n.cfg.exposures() {
		n.log.Warn("cluster port in the clear (--insecure-cluster)", "exposure", e)
	}
	n.log.Info("node started", "api", n.apiAddr, "raft", n.raftAdv, "gossip", n.gossipAddr,
		"data_dir", cfg.DataDir, "log_store", n.storeKind, "existing_state", hasState, "bootstrap_expect", cfg.BootstrapExpect)
	return n, nil
}

func (n *Node) openStores() error {
	var fsyncs prometheus.Observer
	if n.storeKind == LogStoreWAL {
		fsyncs = n.metrics.walFsync
		n.metrics.reg.MustRegister(n.metrics.walFsync) // a bolt node has no such series
	}
	store, err := openLogStore(n.cfg.DataDir, n.storeKind, n.cfg.WALSegmentSize, n.log, fsyncs)
	if err != nil {
		return err
	}
	n.store = store
	// After the log store, whose lock keeps a second process on this dir
	// out before the body store is removed and recreated.
	bodies, err := openBodyStore(n.cfg.DataDir, n.log, int(max(n.cfg.BodyCacheBytes, 0)))
	if err != nil {
		return err
	}
	n.bodies = bodies
	snaps, err := raft.NewFileSnapshotStoreWithLogger(n.cfg.DataDir, n.cfg.SnapshotRetain, hclogFor(n.log, "snapshot"))
	if err != nil {
		return fmt.Errorf("%w: snapshot store in %s: %v", ErrDataDir, filepath.Join(n.cfg.DataDir, "snapshots"), err)
	}
	n.snaps = snaps
	removeUnfinishedSnapshots(filepath.Join(n.cfg.DataDir, "snapshots"), n.log)
	return nil
}

// removeUnfinishedSnapshots deletes the snapshots a stop left half
// written (raft's "<id>.tmp" directories), before raft starts, so none is
// being written. raft never deletes them, and one holds a checkpoint of
// the body store: hard links that would keep sstables the store has
// compacted away, the whole backlog's worth, on disk for good.
func removeUnfinishedSnapshots(dir string, log *slog.Logger) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasSuffix(e.Name(), ".tmp") {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			log.Warn("snapshot left unfinished by the last stop: remove", "name", e.Name(), "err", err)
			continue
		}
		log.Warn("snapshot left unfinished by the last stop: removed", "name", e.Name())
	}
}

// maxAppendEntries bounds one Raft batch: one leader fsync, one
// AppendEntries per follower. raft's default of 64 caps a batch below the
// number of concurrent producers a node serves. raft counts entries, not
// bytes, and one entry may be an 8 MiB enqueue batch: 256 rather than
// raft's maximum of 1024 keeps one AppendEntries of large batches bounded.
const maxAppendEntries = 256

func (n *Node) startRaft() error {
	netCfg := raftnet.Config{
		Bind: n.cfg.RaftAddr, Advertise: n.cfg.RaftAdvertise,
		ServerTLS: n.cfg.RaftServerTLS, ClientTLS: n.cfg.RaftClientTLS,
		Limits:    n.cfg.RaftConnLimits,
		OnRefused: func(reason string) { n.metrics.raftConnsRefused.WithLabelValues(reason).Inc() },
	}
	var peers *raftPeers
	if n.cfg.checksRaftPeers() {
		peers = &raftPeers{self: n.cfg.NodeID, members: n.members, warn: n.log.Warn,
			onRefusedRPC: func(rpc string) { n.metrics.raftRPCsRefused.WithLabelValues(rpc).Inc() }}
		netCfg.AllowPeer = peers.allowIP
	}
	layer, err := raftnet.Listen(netCfg)
	if err != nil {
		return err
	}
	n.raftLayer = layer
	n.raftAdv = layer.Addr().String()
	n.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		ServerAddressProvider: n.members,
		Logger:                hclogFor(n.log, "raft-net"),
		Stream:                layer,
		MaxPool:               3,
		Timeout:               10 * time.Second,
	})

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(n.cfg.NodeID)
	rc.HeartbeatTimeout = n.cfg.HeartbeatTimeout
	rc.ElectionTimeout = n.cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = n.cfg.LeaderLeaseTimeout
	rc.SnapshotInterval = n.cfg.SnapshotInterval
	rc.SnapshotThreshold = n.cfg.SnapshotThreshold
	rc.TrailingLogs = n.cfg.TrailingLogs
	rc.PreVoteDisabled = false // pre-vote: a partitioned node cannot disrupt the leader on its return
	// Group commit: concurrent Applies wait in a buffered channel and the
	// leader takes up to MaxAppendEntries of them into one StoreLogs (one
	// fsync) and one AppendEntries per follower.
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = maxAppendEntries
	rc.Logger = hclogFor(n.log, "raft")
	if err := raft.ValidateConfig(rc); err != nil {
		return configErr("raft: %v", err)
	}

	n.bodies.lowDisk = func() error { low, _ := n.disk.check(); return low }
	n.fsm = fsm.NewWithStore(n.bodies)
	n.budget = newLogBudget(n.cfg.SnapshotBytes)
	var disk raft.LogStore = n.store
	if n.cfg.wrapLogStore != nil {
		disk = n.cfg.wrapLogStore(disk)
	}
	n.verify = newLogVerification(disk, n.store.fileOf, n.log.Error, n.log.Warn, n.log.Debug)
	logs := newLogCache(&checkedLogStore{LogStore: n.verify.store, path: n.store.path, fileOf: n.store.fileOf}, logCacheEntries, logCacheBytes)
	n.logs = logs
	if err := n.seedFromBackup(); err != nil {
		return err
	}
	snaps := &snapshotStore{FileSnapshotStore: n.snaps, dir: filepath.Join(n.cfg.DataDir, "snapshots")}
	n.snapStore = snaps
	var trans raft.Transport = drainedTransport{n.trans}
	if peers != nil {
		trans = newMemberTransport(drainedTransport{n.trans}, peers, n.stop)
	}
	r, err := raft.NewRaft(rc, observedFSM{FSM: n.fsm, m: n.metrics, ct: n.ctime, bodies: n.bodies, snapDir: snaps.dir, budget: n.budget}, logs, n.store.stable, snaps, trans)
	if err != nil {
		return fmt.Errorf("start raft with data dir %s: %w", n.cfg.DataDir, err)
	}
	if peers != nil {
		peers.raft.Store(r)
	}
	snaps.follow(r)
	r.RegisterObserver(raft.NewObserver(nil, false, n.metrics.observeLeader))
	n.raft = r
	return nil
}

func (n *Node) startAPI() error {
	ln, err := net.Listen("tcp", n.cfg.APIAddr)
	if err != nil {
		return fmt.Errorf("API listen on %q: %w", n.cfg.APIAddr, err)
	}
	n.apiLn = ln
	adv, err := advertised("API address", ln.Addr(), n.cfg.APIAdvertise)
	if err != nil {
		return err
	}
	n.apiAddr = adv
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(n.cfg.Limits.MaxRecvMsgSize()),
		grpc.ForceServerCodecV2(n.cfg.Limits.ServerCodec()),
		experimental.BufferPool(wire.BufferPool),
		grpc.MaxConcurrentStreams(n.cfg.MaxInFlightPerConn),
		// Metrics outermost, so refused calls are counted with their code.
		grpc.ChainStreamInterceptor(n.metrics.stream),
	}
	if n.cfg.APIServerTLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(n.cfg.APIServerTLS)))
	}
	n.guard = newMemoryGuard(n.cfg.MemoryLimit, n.metrics.memoryRejects, n.metrics.memoryReserved)
	// gRPC takes one tap handle: the token first, so that a caller without
	// one learns nothing about the node's memory.
	n.disk = newDiskGuard(n.cfg, func() bool { return n.raft.State() == raft.Leader }, n.metrics.reg)
	taps := []tap.ServerInHandle{n.guard.tap, n.disk.tap}
	if tokens := n.cfg.tokens(); len(tokens) > 0 {
		taps = append([]tap.ServerInHandle{tokenAuth{tokens: tokens}.tap}, taps...)
	}
	admit := chainTaps(taps)
	n.forward.n = n
	// Metrics outermost here too. The HTTP API calls the services
	// through the same interceptors.
	unary := []grpc.UnaryServerInterceptor{n.metrics.unary, n.guard.unary, n.disk.unary, n.forward.unary}
	opts = append(opts, grpc.InTapHandle(admit),
		grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(n.guard.stream, n.disk.stream))
	n.grpc = grpc.NewServer(opts...)
	qs, cs := transport.NewQueueService(n, n.cfg.Limits, n.cfg.AutoCreateQueues), &clusterService{n: n}
	qs.Register(n.grpc)
	cs.register(n.grpc)
	n.unary = &transport.UnaryMethods{}
	qs.Register(n.unary)
	cs.register(n.unary)
	return n.startHTTP(admit, unary)
}

// chainTaps runs taps in order; the first refusal is the call's.
func chainTaps(taps []tap.ServerInHandle) tap.ServerInHandle {
	return func(ctx context.Context, info *tap.Info) (context.Context, error) {
		for _, t := range taps {
			var err error
			if ctx, err = t(ctx, info); err != nil {
				return ctx, err
			}
		}
		return ctx, nil
	}
}

func (n *Node) serveAPI() {
	defer n.wg.Done()
	if err := n.grpc.Serve(n.apiLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		n.log.Error("API server stopped", "err", err)
	}
}

// APIAddr is the advertised gRPC address (the real port when configured
// with :0).
func (n *Node) APIAddr() string { return n.apiAddr }

// RaftAddr is the advertised Raft address.
func (n *Node) RaftAddr() string { return n.raftAdv }

// GossipAddr is the advertised gossip address.
func (n *Node) GossipAddr() string { return n.gossipAddr }

// ID is the node's ID.
func (n *Node) ID() string { return n.cfg.NodeID }

// IsLeader reports whether this node is the Raft leader.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// StateHash is the FSM's state hash at AppliedIndex.
func (n *Node) StateHash() string { return n.fsm.StateHash() }

// AppliedIndex is the index of the last log entry the FSM applied.
func (n *Node) AppliedIndex() uint64 { return n.fsm.AppliedIndex() }

// WaitLeader blocks until the node knows a leader and returns its ID.
func (n *Node) WaitLeader(ctx context.Context) (string, error) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if _, id := n.raft.LeaderWithID(); id != "" {
			return string(id), nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("node %s: no leader: %w", n.cfg.NodeID, ctx.Err())
		case <-n.stop:
			return "", fmt.Errorf("node %s: stopped", n.cfg.NodeID)
		case <-t.C:
		}
	}
}

// Shutdown stops the node gracefully: a leader first hands leadership to
// the most up-to-date follower, then Close runs. A failed transfer (no
// follower reachable, as when the whole cluster stops) is logged, not
// returned: the node stops either way and the others elect a leader after
// their election timeout. ctx bounds the whole sequence; what is left when
// it ends is stopped hard.
func (n *Node) Shutdown(ctx context.Context) error {
	if n.closed.Load() {
		return nil
	}
	if n.IsLeader() && n.hasOtherVoter(ctx) {
		if err := n.transferLeadership(ctx, ""); err != nil {
			n.log.Warn("leadership transfer before shutdown failed; stopping anyway", "err", err)
		}
	}
	return n.Close(ctx)
}

// hasOtherVoter reports whether the configuration has a voter besides this
// node (a single-server cluster has no one to hand leadership to).
func (n *Node) hasOtherVoter(ctx context.Context) bool {
	servers, err := n.configuration(ctx)
	if err != nil {
		return true // let the transfer itself report the problem
	}
	for _, s := range servers {
		if s.Suffrage == raft.Voter && string(s.ID) != n.cfg.NodeID {
			return true
		}
	}
	return false
}

// Close stops the node without handing leadership over: the API stops
// (open long polls end), the node leaves gossip, Raft and the stores
// close. Use it when the whole cluster stops (quorumq dev), where a
// transfer would have no one to go to; otherwise use Shutdown.
func (n *Node) Close(ctx context.Context) error {
	if n.closed.Load() {
		return nil
	}
	var errs []error
	n.signalStop()
	done := make(chan struct{})
	go func() { n.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		n.grpc.Stop()
	}
	// Raft stops before the gossip leave, so peers see one clean
	// disconnect instead of a node that still sends while it leaves.
	if err := waitUpTo(n.raft.Shutdown(), raftShutdownTimeout); err != nil {
		errs = append(errs, fmt.Errorf("raft: %w", err))
	}
	if n.ml != nil {
		timeout := time.Second
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
			timeout = time.Until(dl)
		}
		if err := n.ml.Leave(timeout); err != nil {
			// Normal when every other node is gone too.
			n.log.Info("gossip leave not acknowledged", "err", err)
		}
	}
	if err := n.teardown(); err != nil {
		errs = append(errs, err)
	}
	n.log.Info("node stopped")
	return errors.Join(errs...)
}

// Kill stops the node without a leadership transfer or a gossip leave:
// sockets, raft and the log store are closed as they are. It models a
// crash (kill -9) as closely as a process can from inside; what it cannot
// model is losing writes the OS had not yet flushed, which fsync prevents.
func (n *Node) Kill() {
	if n.closed.Load() {
		return
	}
	n.signalStop()
	n.teardown()
	n.log.Info("node killed")
}

func (n *Node) signalStop() {
	n.stopOnce.Do(func() { close(n.stop) })
}

// teardown closes whatever Start opened, in reverse order.
func (n *Node) teardown() error {
	if !n.closed.CompareAndSwap(false, true) {
		return nil
	}
	n.signalStop()
	var errs []error
	if n.admin != nil {
		n.admin.Close()
	}
	if n.http != nil {
		n.http.Close()
	}
	n.forward.close()
	if n.grpc != nil {
		n.grpc.Stop()
	} else if n.apiLn != nil {
		n.apiLn.Close()
	}
	if n.ml != nil {
		if err := n.ml.Shutdown(); err != nil {
			errs = append(errs, fmt.Errorf("gossip: %w", err))
		}
	}
	raftStopped := true
	if n.raft != nil {
		if err := waitUpTo(n.raft.Shutdown(), raftShutdownTimeout); err != nil {
			errs = append(errs, fmt.Errorf("raft: %w", err))
			raftStopped = false
		}
	}
	if n.verify != nil && raftStopped {
		// Its background reader ends; only once raft writes no more,
		// since a checkpoint stored after this would panic.
		n.verify.store.Close()
	}
	if n.trans != nil {
		if err := n.trans.Close(); err != nil {
			errs = append(errs, fmt.Errorf("raft transport: %w", err))
		}
	}
	n.wg.Wait()
	if n.bodies != nil && raftStopped {
		// Only once raft applies no more: a write to a closed pebble
		// panics.
		if err := n.bodies.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", n.bodies.path, err))
		}
	}
	if n.store != nil {
		if err := n.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", n.store.path, err))
		}
	}
	return errors.Join(errs...)
}
