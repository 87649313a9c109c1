package cluster

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"github.com/quorumq/quorumq/transport/raftnet"
	"github.com/quorumq/quorumq/transport/wire"
)

// Config describes one node. Only NodeID, DataDir, the three bind addresses
// and BootstrapExpect or Join are required; every zero duration or count
// takes the default named in its comment.
type Config struct {
	NodeID  string // unique, stable across restarts; [A-Za-z0-9._-]{1,128}
	DataDir string // the log store (wal/ or raft.db), snapshots/ and node.json live here
	// LogStore is the Raft log store of a new data dir: LogStoreWAL
	// (default) or LogStoreBolt. A data dir that already holds one keeps
	// it, whatever this says (a mismatch is logged).
	LogStore string
	// WALSegmentSize is the size in bytes of each raft-wal segment file
	// this node creates: 1 MiB to 1 GiB, default 64 MiB. raft-wal
	// preallocates a segment to this size when it starts one, so a disk
	// that fills up refuses the next segment, not an append inside one.
	// Segments already on disk keep the size their meta records.
	WALSegmentSize int64

	APIAddr, APIAdvertise       string // gRPC bind / advertised (advertised "" = bound, which must be a specific IP)
	RaftAddr, RaftAdvertise     string // Raft stream layer bind / advertised
	GossipAddr, GossipAdvertise string // memberlist bind / advertised (UDP and TCP)

	// BootstrapExpect: once this many fresh servers see each other in
	// gossip, each bootstraps Raft with the same configuration. 0 = never
	// bootstrap; the node waits to be added by an existing leader.
	BootstrapExpect int
	// Join lists gossip addresses (host:port) of other nodes; the node
	// retries them until one answers.
	Join []string
	// AutoCreateQueues creates a queue with default settings on its first
	// enqueue.
	AutoCreateQueues bool

	Logger *slog.Logger // nil = slog.Default()

	// RaftServerTLS and RaftClientTLS secure the Raft port (both or
	// neither). APIServerTLS secures the gRPC API; APIClientTLS is used
	// when this node calls other nodes' APIs (cluster status fan-out).
	RaftServerTLS, RaftClientTLS *tls.Config
	APIServerTLS, APIClientTLS   *tls.Config
	// RaftConnLimits bound the connections the Raft port accepts (TLS
	// handshake and first-byte deadline, idle timeout, caps in total and
	// per remote IP); zero fields take raftnet's defaults.
	RaftConnLimits raftnet.Limits
	// AuthToken, when set, is required as "authorization: Bearer <token>"
	// on every API call, including the nodes' calls to each other. It
	// has the admin scope. It needs APIServerTLS and APIClientTLS.
	AuthToken string
	// AuthTokens are further bearer tokens, each with its scope (read,
	// write or admin; see Scope). With any token configured, a call
	// without a known token is Unauthenticated and a call beyond its
	// token's scope is PermissionDenied.
	AuthTokens []Token
	// HTTPAddr is the bind address of the HTTP/JSON API (every unary
	// rpc, mapped in quorumq.proto; httpapi.go), served with APIServerTLS
	// and the same tokens; "" = none.
	HTTPAddr string
	// AdminAddr is the bind address of the admin HTTP server (/metrics,
	// /healthz, /readyz); "" = none.
	AdminAddr string
	// MaxInFlightPerConn bounds concurrent calls on one client connection
	// (HTTP/2 max concurrent streams; further calls wait). Default 1000.
	MaxInFlightPerConn uint32
	// MemoryLimit: enqueues are refused (ResourceExhausted) while the Go
	// heap holds more than this many bytes. 0 = 80% of the memory
	// available (cgroup limit or physical memory); negative = no guard.
	MemoryLimit int64
	// MinFreeDisk and MinFreeDiskPercent are the free space the data
	// dir's file system must keep, in bytes or in percent of its size (at
	// most one of them set). Below it the leader refuses enqueues,
	// transactions and queue creation with ResourceExhausted, before
	// proposing, and /readyz is 503; receives, acks and purges go on, so
	// consumers can drain. Neither set = 5 % of the file system, at
	// least two wal segments (WALSegmentSize), at most a quarter of it
	// (defaultMinFreeDisk);
	// MinFreeDisk negative = no threshold.
	MinFreeDisk        int64
	MinFreeDiskPercent float64
	// RestoreFrom names a backup file (quorumq backup) to start a new
	// cluster from: the data dir must be empty; the node starts as the only
	// voter with the backup's state and adds the servers that join it.
	RestoreFrom string
	// GossipKey encrypts gossip (16, 24 or 32 bytes, AES); nil = plain.
	GossipKey []byte
	// InsecureCluster allows a Raft port without TLS, or gossip without
	// a key, on an address other hosts can reach. Without it such a
	// configuration is refused; with it the node warns at every start.
	InsecureCluster bool

	Limits wire.Limits // request limits; zero fields take defaults

	HeartbeatTimeout   time.Duration // default 1 s
	ElectionTimeout    time.Duration // default 1 s
	LeaderLeaseTimeout time.Duration // default 500 ms
	SnapshotInterval   time.Duration // how often raft checks SnapshotThreshold; default 30 s
	SnapshotThreshold  uint64        // log entries since the last snapshot that trigger one; default 8192
	TrailingLogs       uint64        // entries kept after a snapshot for slow followers; default 10240
	// SnapshotBytes: bytes of log entries applied since the last snapshot
	// that trigger one, so that large entries cannot grow the log to
	// gigabytes before SnapshotThreshold counts enough of them; default
	// 256 MiB. TrailingBytes: about how many bytes of log a snapshot keeps
	// (at most TrailingLogs entries); default 512 MiB (logbudget.go).
	SnapshotBytes uint64
	TrailingBytes uint64
	// BodyCacheBytes bounds the bodies a node keeps in memory before it
	// writes them to its store, which receives read first (bodybuffer.go);
	// default 64 MiB, negative: none.
	BodyCacheBytes    int64
	SnapshotRetain    int           // snapshots kept on disk; default 2
	TickInterval      time.Duration // leader's periodic tick command; default 1 s
	LogVerifyInterval time.Duration // leader's log-verification checkpoints (logverify.go); default 60 s, negative = none
	ApplyTimeout      time.Duration // cap on one proposal, whatever the caller's deadline; default 10 s
	ReadyMaxLag       uint64        // /readyz: entries a follower may be behind the leader's commit index; default 1000
	StatusTimeout     time.Duration // per-node timeout of the status fan-out; default 1 s
	LocalGossip       bool          // faster gossip timings for loopback clusters (dev, tests)

	// Clock is where the node reads wall and monotonic time; nil = the
	// system clock. Tests and the fault suite move it (OffsetClock).
	Clock Clock
	// WallClockStamps makes a leader stamp commands with its own wall
	// clock instead of cluster time: the behaviour cluster time replaced,
	// kept only so the fault suite can prove that its clock checks fail
	// without it. The release server refuses to set it.
	WallClockStamps bool

	// features, if not nil, replaces the log features this node gossips
	// (supportedFeatures): tests set it empty to play a server of an
	// older release.
	features []string
	// gossipTuning, if not nil, changes memberlist's settings before it
	// starts: tests shorten its failure-detection timers, so a node is
	// declared dead and forgotten within seconds instead of about 40 s.
	gossipTuning func(*memberlist.Config)
	// wrapLogStore, if not nil, wraps the raft log store on disk (beneath
	// the cache and the read checks): tests make its writes fail as a
	// full disk would.
	wrapLogStore func(raft.LogStore) raft.LogStore
	// storeCheck, if not zero, replaces storeCheckInterval (tests).
	storeCheck time.Duration
	// staleRecords, if not zero, replaces minStaleRecords (tests).
	staleRecords uint64
}

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("invalid configuration")

func configErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, args...))
}

// maxNodeID is the longest node ID in bytes.
const maxNodeID = 128

// validateNodeID checks a node ID: 1..128 characters of [A-Za-z0-9._-],
// so that it is safe in file names, metric labels and certificate names.
func validateNodeID(id string) error {
	if id == "" {
		return configErr("node ID is empty: want 1..%d characters of [A-Za-z0-9._-]", maxNodeID)
	}
	if len(id) > maxNodeID {
		return configErr("node ID %q is %d bytes, limit is %d", id, len(id), maxNodeID)
	}
	for i, r := range id {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '.' || r == '_' || r == '-') {
			return configErr("node ID %q has %q at byte %d, allowed are [A-Za-z0-9._-]", id, r, i)
		}
	}
	return nil
}

// withDefaults validates c and fills the defaults.
func (c Config) withDefaults() (Config, error) {
	if err := validateNodeID(c.NodeID); err != nil {
		return c, err
	}
	if c.DataDir == "" {
		return c, configErr("data dir is empty")
	}
	switch c.LogStore {
	case "":
		c.LogStore = LogStoreWAL
	case LogStoreWAL, LogStoreBolt:
	default:
		return c, configErr("log store %q: want wal or bolt", c.LogStore)
	}
	switch {
	case c.WALSegmentSize == 0:
		c.WALSegmentSize = defaultWALSegmentSize
	case c.WALSegmentSize < minWALSegmentSize || c.WALSegmentSize > maxWALSegmentSize:
		return c, configErr("wal segment size (--wal-segment-size) %d bytes: want 1MiB to 1GiB", c.WALSegmentSize)
	}
	for _, a := range []struct{ name, v string }{
		{"API address", c.APIAddr}, {"Raft address", c.RaftAddr}, {"gossip address", c.GossipAddr},
	} {
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			return c, configErr("%s %q: want host:port (%v)", a.name, a.v, err)
		}
	}
	if c.BootstrapExpect < 0 {
		return c, configErr("bootstrap-expect %d is negative", c.BootstrapExpect)
	}
	if (c.RaftServerTLS == nil) != (c.RaftClientTLS == nil) {
		return c, configErr("Raft TLS needs both a server and a client config")
	}
	if len(c.tokens()) > 0 && (c.APIServerTLS == nil || c.APIClientTLS == nil) {
		return c, configErr("an auth token needs API TLS (server and client configs): it must not cross the network in the clear")
	}
	if c.AuthToken != "" && len(c.AuthToken) < minTokenLen {
		return c, configErr("auth token (--auth-token): %d characters, want at least %d", len(c.AuthToken), minTokenLen)
	}
	if err := checkTokens(c.tokens()); err != nil {
		return c, err
	}
	if err := c.checkAdmission(); err != nil {
		return c, err
	}
	if err := c.checkExposure(); err != nil {
		return c, err
	}
	if err := c.Limits.Check(); err != nil {
		return c, configErr("%v", err)
	}
	if c.MaxInFlightPerConn == 0 {
		c.MaxInFlightPerConn = 1000
	}
	if c.MemoryLimit == 0 {
		c.MemoryLimit = defaultMemoryLimit()
	}
	if c.RestoreFrom != "" && c.BootstrapExpect > 1 {
		return c, configErr("restore from %s with bootstrap-expect %d: a restored node starts alone as the only voter; start it without bootstrap-expect and the others with --join", c.RestoreFrom, c.BootstrapExpect)
	}
	if n := len(c.GossipKey); n != 0 && n != 16 && n != 24 && n != 32 {
		return c, configErr("gossip key is %d bytes; want 16, 24 or 32", n)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = SystemClock{}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.HeartbeatTimeout, time.Second)
	def(&c.ElectionTimeout, time.Second)
	def(&c.LeaderLeaseTimeout, 500*time.Millisecond)
	def(&c.SnapshotInterval, 30*time.Second)
	def(&c.TickInterval, time.Second)
	def(&c.LogVerifyInterval, defaultLogVerifyInterval)
	def(&c.ApplyTimeout, 10*time.Second)
	def(&c.StatusTimeout, time.Second)
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 8192
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = 10240
	}
	if c.SnapshotBytes == 0 {
		c.SnapshotBytes = defaultSnapshotBytes
	}
	if c.TrailingBytes == 0 {
		c.TrailingBytes = defaultTrailingBytes
	}
	if c.BodyCacheBytes == 0 {
		c.BodyCacheBytes = bodyBufferBytes
	}
	if c.ReadyMaxLag == 0 {
		c.ReadyMaxLag = 1000
	}
	if err := c.checkMinFreeDisk(); err != nil {
		return c, err
	}
	if c.SnapshotRetain == 0 {
		c.SnapshotRetain = 2
	}
	if c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		return c, configErr("leader lease timeout %v exceeds heartbeat timeout %v", c.LeaderLeaseTimeout, c.HeartbeatTimeout)
	}
	return c, nil
}

// checkMinFreeDisk validates the free-space threshold.
func (c *Config) checkMinFreeDisk() error {
	p := c.MinFreeDiskPercent
	switch {
	case c.MinFreeDisk != 0 && p != 0:
		return configErr("min free disk: %d bytes and %v%% both set; set one", c.MinFreeDisk, p)
	case math.IsNaN(p) || p < 0 || p >= 100:
		return configErr("min free disk %v%%: want more than 0 and less than 100", p)
	}
	return nil
}

// advertised picks the address other nodes use: advertise when set,
// otherwise the bound address, which must then be a specific IP.
func advertised(what string, bound net.Addr, advertise string) (string, error) {
	if advertise != "" {
		host, port, err := net.SplitHostPort(advertise)
		if err != nil {
			return "", configErr("%s advertise address %q: %v", what, advertise, err)
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			return "", configErr("%s advertise address %q must name a reachable host, not %s", what, advertise, host)
		}
		if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
			return "", configErr("%s advertise address %q: port must be 1..65535", what, advertise)
		}
		return advertise, nil
	}
	tcp, ok := bound.(*net.TCPAddr)
	if !ok || tcp.IP.IsUnspecified() {
		return "", configErr("%s is bound to %v; set an advertise address other nodes can reach", what, bound)
	}
	return tcp.String(), nil
}
