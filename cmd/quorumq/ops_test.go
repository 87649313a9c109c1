package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/cluster"
)

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestConfigFilePrecedence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "quorumq.conf")
	writeFile(t, path, `# a three-machine cluster
node-id = file-node
api-addr = "10.0.0.1:7101"     # quoted
raft-addr = 10.0.0.1:7201 # unquoted, trailing comment
join = 10.0.0.2:7301, 10.0.0.3:7301
bootstrap-expect = 3
memory-limit = 2GiB
log-store = bolt
`)
	cmd := serverCmd()
	t.Setenv("QUORUMQ_RAFT_ADDR", "10.9.9.9:7201") // env beats the file
	t.Setenv("QUORUMQ_LOG_STORE", "wal")
	if err := cmd.ParseFlags([]string{"--config", path, "--node-id", "flag-node"}); err != nil {
		t.Fatal(err)
	}
	if err := flagSources(cmd.Flags()); err != nil {
		t.Fatal(err)
	}
	get := func(name string) string { return cmd.Flags().Lookup(name).Value.String() }
	for flag, want := range map[string]string{
		"node-id":          "flag-node", // the command line beats the file
		"api-addr":         "10.0.0.1:7101",
		"raft-addr":        "10.9.9.9:7201",
		"join":             "[10.0.0.2:7301,10.0.0.3:7301]",
		"bootstrap-expect": "3",
		"memory-limit":     "2GiB",
		"log-store":        "wal",            // env beats the file
		"gossip-addr":      "127.0.0.1:7301", // in none of them: the default
	} {
		if got := get(flag); got != want {
			t.Errorf("%s = %q, want %q", flag, got, want)
		}
	}

	for _, tc := range []struct{ text, want string }{
		{"data-dirr = /x\n", path + `:1: unknown setting "data-dirr"`},
		{"\nbootstrap-expect = three\n", path + `:2: bootstrap-expect = "three"`},
		{"node-id n1\n", path + `:1: "node-id n1": want name = value`},
		{"node-id = a\nnode-id = b\n", path + ":2: node-id is already set on line 1"},
	} {
		writeFile(t, path, tc.text)
		cmd := serverCmd()
		if err := cmd.ParseFlags([]string{"--config", path}); err != nil {
			t.Fatal(err)
		}
		if err := flagSources(cmd.Flags()); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: %v, want an error containing %q", tc.text, err, tc.want)
		}
	}
}

func TestOperationsFlagErrors(t *testing.T) {
	base := serverFlags{logStore: "wal", maxInFlight: 10, memoryLimit: "auto", maxMessageBytes: "1MiB", maxBatchMessages: 1000, maxBatchBytes: "8MiB", maxQueues: 10000, minFreeDisk: "auto", gcHeadroom: "256MiB"}
	for _, tc := range []struct {
		edit func(*serverFlags)
		want string
	}{
		{func(f *serverFlags) { f.memoryLimit = "lots" }, `--memory-limit "lots": want a positive number of bytes`},
		{func(f *serverFlags) { f.gcHeadroom = "64KiB" }, "--gc-headroom 64KiB: want at least 1MiB, or off"},
		{func(f *serverFlags) { f.gcHeadroom = "lots" }, `--gc-headroom "lots": want a positive number of bytes`},
		{func(f *serverFlags) { f.maxMessageBytes = "2MiB" }, "--max-message-size 2MiB: limit is 1048576 bytes"},
		{func(f *serverFlags) { f.maxBatchMessages = 1001 }, "--max-batch 1001: want 1..1000"},
		{func(f *serverFlags) { f.maxQueues = 0 }, "--max-queues 0: want at least 1"},
		{func(f *serverFlags) { f.maxBatchBytes = "512KiB" }, "--max-batch-size 512KiB is smaller than --max-message-size 1MiB"},
		{func(f *serverFlags) { f.maxInFlight = 0 }, "--max-inflight-per-conn 0"},
		{func(f *serverFlags) { f.logStore = "rocksdb" }, `--log-store "rocksdb": want wal or bolt`},
		{func(f *serverFlags) { f.minFreeDisk = "100%" }, `--min-free-disk "100%": want a percentage above 0 and below 100, bytes (KiB, MiB, GiB, TiB), auto or off`},
		{func(f *serverFlags) { f.minFreeDisk = "lots" }, `--min-free-disk "lots": want a positive number of bytes, optionally with KiB, MiB, GiB or TiB; or a percentage of the file system such as 5%, auto or off`},
	} {
		f := base
		tc.edit(&f)
		if err := f.operations(&cluster.Config{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", f, err, tc.want)
		}
	}
	var cfg cluster.Config
	f := base
	f.memoryLimit, f.maxMessageBytes, f.logStore = "512MiB", "64KiB", "bolt"
	if err := f.operations(&cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.LogStore != cluster.LogStoreBolt {
		t.Errorf("--log-store bolt gives Config.LogStore %q", cfg.LogStore)
	}
	if cfg.MemoryLimit != 512<<20 || cfg.Limits.MaxMessageBytes != 64<<10 || cfg.MaxInFlightPerConn != 10 {
		t.Errorf("operations: memory %d, message %d, in-flight %d", cfg.MemoryLimit, cfg.Limits.MaxMessageBytes, cfg.MaxInFlightPerConn)
	}
	for _, tc := range []struct {
		flag    string
		bytes   int64
		percent float64
	}{{"auto", 0, 0}, {"5%", 0, 5}, {"0.5%", 0, 0.5}, {"2GiB", 2 << 30, 0}, {"off", -1, 0}} {
		var cfg cluster.Config
		f := base
		f.minFreeDisk = tc.flag
		if err := f.operations(&cfg); err != nil || cfg.MinFreeDisk != tc.bytes || cfg.MinFreeDiskPercent != tc.percent {
			t.Errorf("--min-free-disk %s: %v, MinFreeDisk %d, MinFreeDiskPercent %v, want %d and %v", tc.flag, err, cfg.MinFreeDisk, cfg.MinFreeDiskPercent, tc.bytes, tc.percent)
		}
	}
}

// execute runs a fresh command tree (cobra keeps a finished run's
// context and flag values on a command) with args.
func execute(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "quorumq", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(tlsCmd(), backupCmd(), sendCmd(), dataCmd())
	var out bytes.Buffer
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&bytes.Buffer{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// TestSecureClusterBackupAndRestore runs the documented path end to end:
// a development CA and certificate from `quorumq tls`, a tokens file, the
// server's security flags, then `quorumq backup` with an admin token (a
// write token is refused) and a fresh cluster started from the file.
func TestSecureClusterBackupAndRestore(t *testing.T) {
	dir := t.TempDir()
	if _, err := execute(t, "tls", "ca", "--dir", dir); err != nil {
		t.Fatal(err)
	}
	if _, err := execute(t, "tls", "ca", "--dir", dir); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("second tls ca: %v, want a refusal to overwrite", err)
	}
	// One certificate per server, named by its node ID: members prove
	// their ID with it before they become voters.
	tokens := filepath.Join(dir, "tokens")
	writeFile(t, tokens, "# token scope\nadmin-0123456789abcdef admin\nwrite-0123456789abcdef write\n")
	secs := make([]cluster.Config, 3)
	for i := range secs {
		name := fmt.Sprintf("n%d", i+1)
		if _, err := execute(t, "tls", "cert", "--dir", dir, "--name", name, "--hosts", "127.0.0.1,localhost"); err != nil {
			t.Fatal(err)
		}
		f := serverFlags{
			tlsCert: filepath.Join(dir, name+".pem"), tlsKey: filepath.Join(dir, name+"-key.pem"), tlsCA: filepath.Join(dir, "ca.pem"),
			authTokensFile: tokens,
		}
		if err := f.security(&secs[i]); err != nil {
			t.Fatal(err)
		}
	}
	noTick := func(c *cluster.Config) { c.TickInterval = time.Hour }
	tc := cluster.StartTestClusterWith(t, 3, func(i int, c *cluster.Config) {
		sec := secs[i]
		c.APIServerTLS, c.APIClientTLS, c.RaftServerTLS, c.RaftClientTLS = sec.APIServerTLS, sec.APIClientTLS, sec.RaftServerTLS, sec.RaftClientTLS
		c.AuthTokens = sec.AuthTokens
		noTick(c)
	})
	addr := strings.Join(tc.Addrs(), ",")
	secure := []string{"--addr", addr, "--tls-ca", filepath.Join(dir, "ca.pem"), "--timeout", "20s"}
	if _, err := execute(t, append([]string{"send", "jobs", "hello", "--dedup-id", "h1", "--token", "write-0123456789abcdef"}, secure...)...); err != nil {
		t.Fatalf("send with the write token: %v", err)
	}
	hash := tc.WaitReplicated(t)

	file := filepath.Join(dir, "backup.qq")
	if _, err := execute(t, append([]string{"backup", file, "--token", "write-0123456789abcdef"}, secure...)...); err == nil || !strings.Contains(err.Error(), "scope admin") {
		t.Fatalf("backup with the write token: %v, want a refusal naming the admin scope", err)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("a refused backup left %s behind (%v)", file, err)
	}
	out, err := execute(t, append([]string{"backup", file, "--token", "admin-0123456789abcdef"}, secure...)...)
	if err != nil || !strings.Contains(out, "bytes written to "+file) {
		t.Fatalf("backup with the admin token: %q %v", out, err)
	}
	if _, err := execute(t, append([]string{"backup", file, "--token", "admin-0123456789abcdef"}, secure...)...); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("backup over an existing file: %v, want a refusal naming --force", err)
	}

	fresh := cluster.StartTestClusterWith(t, 3, func(i int, c *cluster.Config) {
		noTick(c)
		c.BootstrapExpect = 0
		if i == 0 {
			c.RestoreFrom = file
		}
	})
	if got := fresh.WaitReplicated(t); got != hash {
		t.Fatalf("cluster restored from %s has state hash %s, want %s", file, got, hash)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.New(ctx, fresh.Addrs())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	info, err := c.GetQueue(ctx, "jobs")
	if err != nil || info.Stats.Ready != 1 {
		t.Fatalf("restored queue jobs: %v %v, want 1 ready message", info, err)
	}
}

// TestWALSegmentSizeFlag: --wal-segment-size reaches Config in bytes from
// the flag, the environment and the config file; a value that is no size,
// or one outside the range the cluster accepts, is refused by the server
// naming the flag.
func TestWALSegmentSizeFlag(t *testing.T) {
	for _, tc := range []struct{ value, want string }{
		{"lots", `--wal-segment-size "lots": want a positive number of bytes`},
		{"512KiB", "--wal-segment-size"},
		{"2GiB", "--wal-segment-size"},
	} {
		cmd := serverCmd()
		cmd.SetArgs([]string{"--data-dir", t.TempDir(), "--bootstrap-expect", "1",
			"--api-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0",
			"--wal-segment-size", tc.value})
		cmd.SetOut(&bytes.Buffer{})
		cmd.SetErr(&bytes.Buffer{})
		cmd.SilenceUsage, cmd.SilenceErrors = true, true
		err := cmd.ExecuteContext(ctxTimeout(t, 10*time.Second))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--wal-segment-size %s: %v, want an error containing %q", tc.value, err, tc.want)
		}
		if tc.value != "lots" && (err == nil || !strings.Contains(err.Error(), "1MiB to 1GiB")) {
			t.Errorf("--wal-segment-size %s: %v, want the accepted range", tc.value, err)
		}
	}

	path := filepath.Join(t.TempDir(), "quorumq.conf")
	writeFile(t, path, "wal-segment-size = 4MiB\n")
	for _, env := range []string{"", "8MiB"} {
		if env != "" {
			t.Setenv("QUORUMQ_WAL_SEGMENT_SIZE", env)
		}
		cmd := serverCmd()
		if err := cmd.ParseFlags([]string{"--config", path}); err != nil {
			t.Fatal(err)
		}
		if err := flagSources(cmd.Flags()); err != nil {
			t.Fatal(err)
		}
		f := serverFlags{logStore: "wal", maxInFlight: 10, memoryLimit: "auto", maxMessageBytes: "1MiB", maxBatchMessages: 1000, maxBatchBytes: "8MiB", maxQueues: 10000, minFreeDisk: "256MiB", gcHeadroom: "256MiB"}
		f.walSegmentSize = cmd.Flags().Lookup("wal-segment-size").Value.String()
		var cfg cluster.Config
		if err := f.operations(&cfg); err != nil {
			t.Fatal(err)
		}
		want := int64(4 << 20)
		if env != "" {
			want = 8 << 20 // the environment beats the file
		}
		if cfg.WALSegmentSize != want {
			t.Errorf("env %q: Config.WALSegmentSize %d, want %d", env, cfg.WALSegmentSize, want)
		}
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
