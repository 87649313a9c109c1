package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/quorumq/quorumq/cluster"
	"github.com/quorumq/quorumq/fsm"
)

func init() { rootCmd.AddCommand(serverCmd()) }

// serverFlags are the flags of `quorumq server`.
type serverFlags struct {
	nodeID, dataDir                string
	logStore                       string
	walSegmentSize                 string
	snapshotBytes, trailingBytes   string
	bodyCache                      string
	apiAddr, apiAdvertise          string
	raftAddr, raftAdvertise        string
	gossipAddr, gossipAdvertise    string
	bootstrapExpect                int
	join                           []string
	autoCreate                     bool
	logLevel, logFormat            string
	shutdownTimeout                time.Duration
	gcHeadroom                     string
	snapshotThreshold, trailingLog uint64
	snapshotInterval               time.Duration
	logVerifyInterval              time.Duration
	tlsCert, tlsKey, tlsCA         string
	authToken, gossipKey           string
	authTokensFile                 string
	config                         string
	adminAddr                      string
	httpAddr                       string
	maxInFlight                    uint32
	memoryLimit                    string
	minFreeDisk                    string
	maxMessageBytes                string
	maxBatchMessages               int
	maxQueues                      int
	insecureCluster                bool
	maxBatchBytes                  string
	restoreFrom                    string
	fakeClockFile                  string // fakeclock.go
	wallClockStamps                bool
}

func serverCmd() *cobra.Command {
	var f serverFlags
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run one quorumq server (a cluster is three or five of them)",
		Long: `Run one quorumq server.

Start three servers with the same --bootstrap-expect 3 and --join pointing at
the others' gossip addresses; once they see each other they bootstrap one Raft
cluster. A server started later with --join is added by the leader. Restart a
server with the same --node-id and --data-dir: it rejoins without
bootstrapping again.

Every flag can also be set through an environment variable, QUORUMQ_ and
the flag name in upper snake case (--node-id is QUORUMQ_NODE_ID), and in the
--config file as "name = value" lines with the flag's name (node-id = n1).
The command line wins over the environment, which wins over the file.

Start a new cluster from a backup (quorumq backup FILE): the first server
with --restore-from FILE on an empty data dir (no --bootstrap-expect), the
others with --join; the first server adds them.`,
		Args: cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			return flagSources(cmd.Flags())
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			privateFiles()
			logger, err := newSlogLogger(cmd.ErrOrStderr(), f.logLevel, f.logFormat)
			if err != nil {
				return err
			}
			if f.dataDir == "" {
				return errors.New("--data-dir (QUORUMQ_DATA_DIR) is required: the Raft log and snapshots live there")
			}
			cfg := cluster.Config{
				NodeID: f.nodeID, DataDir: f.dataDir,
				APIAddr: f.apiAddr, APIAdvertise: f.apiAdvertise,
				RaftAddr: f.raftAddr, RaftAdvertise: f.raftAdvertise,
				GossipAddr: f.gossipAddr, GossipAdvertise: f.gossipAdvertise,
				BootstrapExpect:   f.bootstrapExpect,
				Join:              cleanList(f.join),
				AutoCreateQueues:  f.autoCreate,
				Logger:            logger,
				SnapshotThreshold: f.snapshotThreshold,
				TrailingLogs:      f.trailingLog,
				SnapshotInterval:  f.snapshotInterval,
				LogVerifyInterval: f.logVerifyInterval,
			}
			if err := f.security(&cfg); err != nil {
				return err
			}
			for _, w := range f.secretFileWarnings() {
				logger.Warn(w)
			}
			if err := f.operations(&cfg); err != nil {
				return err
			}
			if err := f.fakeClock(cmd.Context(), &cfg); err != nil {
				return err
			}
			if cfg.BootstrapExpect == 0 && len(cfg.Join) == 0 && cfg.RestoreFrom == "" {
				return errors.New("give --bootstrap-expect N (a new cluster of N servers), --join (an existing cluster) or --restore-from (a new cluster from a backup)")
			}
			headroom, err := f.gcHeadroomBytes()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			tuneGC(ctx, headroom, logger)
			node, err := cluster.Start(ctx, cfg)
			if err != nil {
				return err
			}
			<-ctx.Done()
			logger.Info("signal received; shutting down (a second signal stops at once)", "timeout", f.shutdownTimeout)
			stop() // a second Ctrl-C now terminates the process
			sctx, cancel := context.WithTimeout(context.Background(), f.shutdownTimeout)
			defer cancel()
			return node.Shutdown(sctx)
		},
	}
	host, _ := os.Hostname()
	fl := cmd.Flags()
	fl.StringVar(&f.nodeID, "node-id", host, "unique, stable ID of this server ([A-Za-z0-9._-]; defaults to the host name)")
	fl.StringVar(&f.dataDir, "data-dir", "", "directory for the Raft log (wal/ or raft.db), snapshots and node.json (required)")
	fl.StringVar(&f.logStore, "log-store", cluster.LogStoreWAL, "Raft log store of a new data dir: wal (raft-wal) or bolt (raft-boltdb); a data dir keeps the store it has (convert bolt to wal with quorumq data migrate-log)")
	fl.StringVar(&f.walSegmentSize, "wal-segment-size", "64MiB", "size of each raft-wal segment file a wal node creates, preallocated when it starts (1MiB to 1GiB); existing segments keep theirs")
	fl.StringVar(&f.apiAddr, "api-addr", "127.0.0.1:7101", "gRPC API bind address")
	fl.StringVar(&f.apiAdvertise, "api-advertise", "", "API address clients and other servers use (default: the bind address)")
	fl.StringVar(&f.raftAddr, "raft-addr", "127.0.0.1:7201", "Raft bind address")
	fl.StringVar(&f.raftAdvertise, "raft-advertise", "", "Raft address other servers use (default: the bind address)")
	fl.StringVar(&f.gossipAddr, "gossip-addr", "127.0.0.1:7301", "gossip bind address (TCP and UDP)")
	fl.StringVar(&f.gossipAdvertise, "gossip-advertise", "", "gossip address other servers use (default: the bind address)")
	fl.IntVar(&f.bootstrapExpect, "bootstrap-expect", 0, "bootstrap a new cluster once this many servers see each other (0: only join)")
	fl.StringSliceVar(&f.join, "join", nil, "comma-separated gossip addresses (host:port) of other servers")
	fl.BoolVar(&f.autoCreate, "auto-create-queues", true, "create a queue with default settings on its first enqueue")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.logFormat, "log-format", "text", "text or json")
	fl.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 15*time.Second, "how long a graceful shutdown (leadership transfer, gossip leave) may take")
	fl.Uint64Var(&f.snapshotThreshold, "snapshot-threshold", 8192, "log entries since the last snapshot that trigger a new one")
	fl.DurationVar(&f.snapshotInterval, "snapshot-interval", 30*time.Second, "how often to check --snapshot-threshold (raft adds up to this much random jitter)")
	fl.DurationVar(&f.logVerifyInterval, "log-verify-interval", time.Minute, "how often the leader appends a checkpoint at which every server verifies its Raft log against the leader's checksum; negative: never")
	fl.Uint64Var(&f.trailingLog, "trailing-logs", 10240, "log entries kept after a snapshot so a slow follower can catch up from the log")
	fl.StringVar(&f.snapshotBytes, "snapshot-bytes", "256MiB", "bytes of log entries applied since the last snapshot that trigger a new one, whatever --snapshot-threshold counts")
	fl.StringVar(&f.bodyCache, "body-cache", "32MiB", "bodies each node keeps in memory before it writes them to its body store (a follower half of it): a message acked meanwhile never reaches the disk, and receives read them without a disk read; 0: none")
	fl.StringVar(&f.trailingBytes, "trailing-bytes", "512MiB", "about how many bytes of log a snapshot keeps for slow followers (at most --trailing-logs entries, at least 16)")
	fl.StringVar(&f.tlsCert, "tls-cert", "", "PEM certificate of this server (API and Raft TLS); its SANs must cover the advertised addresses")
	fl.StringVar(&f.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fl.StringVar(&f.tlsCA, "tls-ca", "", "PEM CA that signed every server's certificate (verifies Raft peers both ways; required with --tls-cert)")
	fl.StringVar(&f.authToken, "auth-token", "", "require this bearer token on every API call (needs --tls-cert)")
	fl.StringVar(&f.gossipKey, "gossip-key", "", "base64 AES key (16, 24 or 32 bytes) that encrypts gossip; the same on every server")
	fl.BoolVar(&f.insecureCluster, "insecure-cluster", false, "allow Raft without TLS or gossip without a key on an address other hosts can reach (warned at every start)")
	fl.StringVar(&f.authTokensFile, "auth-tokens-file", "", "file of bearer tokens, one \"TOKEN SCOPE\" per line, scope read, write or admin (needs --tls-cert)")
	fl.StringVar(&f.config, configFlag, "", "config file of \"name = value\" lines, names as these flags (command line and environment win)")
	fl.StringVar(&f.httpAddr, "http-addr", "", "bind address of the HTTP/JSON API (every unary API call; same TLS and tokens as --api-addr; OpenAPI at /v1/openapi.json); empty: none")
	fl.StringVar(&f.adminAddr, "admin-addr", "", "HTTP bind address for /metrics (Prometheus), /healthz and /readyz; empty: no admin server")
	fl.Uint32Var(&f.maxInFlight, "max-inflight-per-conn", 1000, "concurrent API calls on one client connection; further calls wait")
	fl.StringVar(&f.minFreeDisk, "min-free-disk", "auto", "free space the data dir's file system keeps: a percentage of its size (5%), bytes (KiB/MiB/GiB), auto (5%, at least 128MiB, at most a quarter) or off; below it the leader refuses enqueues and queue creation (ResourceExhausted) and /readyz answers 503")
	fl.StringVar(&f.gcHeadroom, "gc-headroom", "256MiB", "about how much the heap may grow between garbage collections once the live heap is larger than this (bytes or KiB/MiB/GiB; GOGC, if set, wins), or off for Go's default of twice the live heap")
	fl.StringVar(&f.memoryLimit, "memory-limit", "auto", "refuse enqueues (ResourceExhausted) while the heap is above this: bytes (or KiB/MiB/GiB), auto (80% of cgroup or physical memory) or off")
	fl.StringVar(&f.maxMessageBytes, "max-message-size", "1MiB", "largest message body plus attributes (at most 1MiB)")
	fl.IntVar(&f.maxBatchMessages, "max-batch", 1000, "messages in one enqueue or transaction (at most 1000)")
	fl.IntVar(&f.maxQueues, "max-queues", 10000, "queues in the cluster; creating one more (or auto-creating it on enqueue) is refused with ResourceExhausted")
	fl.StringVar(&f.maxBatchBytes, "max-batch-size", "8MiB", "bodies plus attributes of one enqueue or transaction")
	fl.StringVar(&f.restoreFrom, "restore-from", "", "backup file (quorumq backup) to start a new cluster from; needs an empty --data-dir")
	// Test-only: a build with -tags fakeclock honours them (fakeclock.go);
	// the release build refuses them (fakeclock_release.go).
	fl.StringVar(&f.fakeClockFile, "fake-clock-file", "", "test builds only: file holding this server's wall-clock offset")
	fl.BoolVar(&f.wallClockStamps, "fake-clock-wall-stamps", false, "test builds only: stamp commands with the leader's wall clock, not cluster time")
	_ = fl.MarkHidden("fake-clock-file")
	_ = fl.MarkHidden("fake-clock-wall-stamps")
	return cmd
}

// secretFileWarnings names each secret file (the tokens file, the TLS key)
// that group or others may read.
func (f *serverFlags) secretFileWarnings() []string {
	var out []string
	for _, s := range []struct{ flag, path string }{{"--auth-tokens-file", f.authTokensFile}, {"--tls-key", f.tlsKey}} {
		if s.path == "" {
			continue
		}
		if st, err := os.Stat(s.path); err == nil && st.Mode().Perm()&0o077 != 0 {
			out = append(out, fmt.Sprintf("%s %s has mode %v: readable by group or others; chmod 600 it", s.flag, s.path, st.Mode().Perm()))
		}
	}
	return out
}

// privateFiles makes every file and directory the server creates from now
// on readable by its own user only (umask 077): the Raft log and the
// snapshots, which raft's stores create, hold message bodies.
func privateFiles() { syscall.Umask(0o077) }

// security fills cfg's TLS, token and gossip-key settings from the flags.
// One certificate serves the API and Raft; Raft requires client
// certificates signed by --tls-ca, so only cluster members can join the
// replication stream.
func (f *serverFlags) security(cfg *cluster.Config) error {
	if f.gossipKey != "" {
		key, err := base64.StdEncoding.DecodeString(f.gossipKey)
		if err != nil {
			return fmt.Errorf("--gossip-key: not base64: %w", err)
		}
		cfg.GossipKey = key
	}
	cfg.AuthToken = f.authToken
	cfg.InsecureCluster = f.insecureCluster
	if f.authTokensFile != "" {
		tokens, err := readTokenFile(f.authTokensFile)
		if err != nil {
			return err
		}
		cfg.AuthTokens = tokens
	}
	if f.tlsCert == "" && f.tlsKey == "" && f.tlsCA == "" {
		if f.authToken != "" || f.authTokensFile != "" {
			return errors.New("--auth-token and --auth-tokens-file need --tls-cert, --tls-key and --tls-ca: a token must not cross the network in the clear")
		}
		return nil
	}
	if f.tlsCert == "" || f.tlsKey == "" || f.tlsCA == "" {
		return errors.New("TLS needs all three of --tls-cert, --tls-key and --tls-ca")
	}
	cert, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
	if err != nil {
		return fmt.Errorf("--tls-cert %s / --tls-key %s: %w", f.tlsCert, f.tlsKey, err)
	}
	pem, err := os.ReadFile(f.tlsCA)
	if err != nil {
		return fmt.Errorf("--tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("--tls-ca %s: no PEM certificate in it", f.tlsCA)
	}
	certs := []tls.Certificate{cert}
	cfg.APIServerTLS = &tls.Config{Certificates: certs, MinVersion: tls.VersionTLS12}
	cfg.APIClientTLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	cfg.RaftServerTLS = &tls.Config{Certificates: certs, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}
	cfg.RaftClientTLS = &tls.Config{Certificates: certs, RootCAs: pool, MinVersion: tls.VersionTLS13}
	return nil
}

// operations fills cfg's admin address, limits, memory guard and restore
// settings from the flags.
// gcHeadroomBytes parses --gc-headroom: 0 for off.
func (f *serverFlags) gcHeadroomBytes() (uint64, error) {
	if f.gcHeadroom == "off" {
		return 0, nil
	}
	v, err := parseBytes("gc-headroom", f.gcHeadroom)
	if err != nil {
		return 0, err
	}
	if v < 1<<20 {
		return 0, fmt.Errorf("--gc-headroom %s: want at least 1MiB, or off", f.gcHeadroom)
	}
	return uint64(v), nil
}

func (f *serverFlags) operations(cfg *cluster.Config) error {
	if _, err := f.gcHeadroomBytes(); err != nil {
		return err
	}
	cfg.AdminAddr = f.adminAddr
	cfg.HTTPAddr = f.httpAddr
	cfg.RestoreFrom = f.restoreFrom
	if f.logStore != cluster.LogStoreWAL && f.logStore != cluster.LogStoreBolt {
		return fmt.Errorf("--log-store %q: want wal or bolt", f.logStore)
	}
	cfg.LogStore = f.logStore
	for _, b := range []struct {
		flag, value string
		to          *uint64
	}{{"snapshot-bytes", f.snapshotBytes, &cfg.SnapshotBytes}, {"trailing-bytes", f.trailingBytes, &cfg.TrailingBytes}} {
		if b.value == "" {
			continue // cluster.Config's default
		}
		v, err := parseBytes(b.flag, b.value)
		if err != nil {
			return err
		}
		*b.to = uint64(v)
	}
	switch f.bodyCache {
	case "":
	case "0":
		cfg.BodyCacheBytes = -1
	default:
		v, err := parseBytes("body-cache", f.bodyCache)
		if err != nil {
			return err
		}
		cfg.BodyCacheBytes = v
	}
	if f.walSegmentSize != "" {
		seg, err := parseBytes("wal-segment-size", f.walSegmentSize)
		if err != nil {
			return err
		}
		cfg.WALSegmentSize = seg // its range is checked by cluster.Config
	}
	if f.maxInFlight == 0 {
		return errors.New("--max-inflight-per-conn 0: want at least 1")
	}
	cfg.MaxInFlightPerConn = f.maxInFlight
	switch f.memoryLimit {
	case "auto":
	case "off":
		cfg.MemoryLimit = -1
	default:
		v, err := parseBytes("memory-limit", f.memoryLimit)
		if err != nil {
			return err
		}
		cfg.MemoryLimit = v
	}
	if err := parseMinFreeDisk(cfg, f.minFreeDisk); err != nil {
		return err
	}
	msg, err := parseBytes("max-message-size", f.maxMessageBytes)
	if err != nil {
		return err
	}
	batch, err := parseBytes("max-batch-size", f.maxBatchBytes)
	if err != nil {
		return err
	}
	// The FSM has hard caps of its own (they bound snapshot records); the
	// flags can only lower them.
	if f.maxBatchMessages <= 0 || f.maxBatchMessages > fsm.MaxBatch {
		return fmt.Errorf("--max-batch %d: want 1..%d", f.maxBatchMessages, fsm.MaxBatch)
	}
	if batch < msg {
		return fmt.Errorf("--max-batch-size %s is smaller than --max-message-size %s: a single message could never be sent", f.maxBatchBytes, f.maxMessageBytes)
	}
	if msg > fsm.MaxBodyBytes {
		return fmt.Errorf("--max-message-size %s: limit is %d bytes (1MiB), the state machine's own cap", f.maxMessageBytes, fsm.MaxBodyBytes)
	}
	cfg.Limits.MaxMessageBytes = int(msg)
	cfg.Limits.MaxBatchBytes = int(batch)
	cfg.Limits.MaxBatchMessages = f.maxBatchMessages
	if f.maxQueues <= 0 {
		return fmt.Errorf("--max-queues %d: want at least 1", f.maxQueues)
	}
	cfg.Limits.MaxQueues = f.maxQueues
	return nil
}

// flagsFromEnv sets every flag not given on the command line from its
// environment variable, QUORUMQ_<FLAG_NAME>.
func flagsFromEnv(fs *pflag.FlagSet) error {
	var errs []error
	fs.VisitAll(func(fl *pflag.Flag) {
		if fl.Changed {
			return
		}
		name := envName(fl.Name)
		v, ok := os.LookupEnv(name)
		if !ok {
			return
		}
		if sv, ok := fl.Value.(pflag.SliceValue); ok {
			// Replace, not append to, the default.
			if err := sv.Replace(cleanList(strings.Split(v, ","))); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q (for --%s): %w", name, v, fl.Name, err))
			}
			return
		}
		if err := fl.Value.Set(v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q (for --%s): %w", name, v, fl.Name, err))
		}
	})
	return errors.Join(errs...)
}

// envName is the environment variable of flag name: node-id → QUORUMQ_NODE_ID.
func envName(flag string) string {
	return "QUORUMQ_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

func cleanList(in []string) []string {
	var out []string
	for _, s := range in {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// newSlogLogger builds the process's one log stream; raft's and
// memberlist's logs are routed into it by package cluster.
func newSlogLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
}
