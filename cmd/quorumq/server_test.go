package main

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/quorumq/quorumq/cluster"
	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/jepsen-style-tests/harness"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

func TestServerFlagsFromEnv(t *testing.T) {
	cmd := serverCmd()
	t.Setenv("QUORUMQ_NODE_ID", "env-node")
	t.Setenv("QUORUMQ_JOIN", "10.0.0.1:7301, 10.0.0.2:7301")
	t.Setenv("QUORUMQ_BOOTSTRAP_EXPECT", "3")
	t.Setenv("QUORUMQ_AUTO_CREATE_QUEUES", "false")
	t.Setenv("QUORUMQ_API_ADDR", "from-env:1")
	if err := cmd.ParseFlags([]string{"--api-addr", "127.0.0.1:9"}); err != nil {
		t.Fatal(err)
	}
	if err := flagsFromEnv(cmd.Flags()); err != nil {
		t.Fatal(err)
	}
	get := func(name string) string { return cmd.Flags().Lookup(name).Value.String() }
	for flag, want := range map[string]string{
		"node-id":            "env-node",
		"join":               "[10.0.0.1:7301,10.0.0.2:7301]",
		"bootstrap-expect":   "3",
		"auto-create-queues": "false",
		"api-addr":           "127.0.0.1:9", // the command line wins
	} {
		if got := get(flag); got != want {
			t.Errorf("--%s = %q, want %q", flag, got, want)
		}
	}

	t.Setenv("QUORUMQ_BOOTSTRAP_EXPECT", "three")
	err := flagsFromEnv(serverCmd().Flags())
	if err == nil || !strings.Contains(err.Error(), "QUORUMQ_BOOTSTRAP_EXPECT") || !strings.Contains(err.Error(), "--bootstrap-expect") {
		t.Fatalf("bad env value: %v, want an error naming the variable and the flag", err)
	}
}

func TestServerSecurityFlags(t *testing.T) {
	var cfg cluster.Config
	f := serverFlags{authToken: "t"}
	if err := f.security(&cfg); err == nil || !strings.Contains(err.Error(), "--auth-token") {
		t.Fatalf("token without TLS: %v", err)
	}
	f = serverFlags{tlsCert: "c.pem"}
	if err := f.security(&cfg); err == nil || !strings.Contains(err.Error(), "--tls-key") {
		t.Fatalf("cert without key: %v", err)
	}
	f = serverFlags{gossipKey: "%%%"}
	if err := f.security(&cfg); err == nil || !strings.Contains(err.Error(), "--gossip-key") {
		t.Fatalf("bad gossip key: %v", err)
	}
}

// A tokens file or TLS key that other local users can read is named in a
// warning at start, as ssh does for private keys.
func TestLooseSecretFilesAreWarnedAbout(t *testing.T) {
	dir := t.TempDir()
	tokens, key := filepath.Join(dir, "tokens"), filepath.Join(dir, "key.pem")
	writeFile(t, tokens, "admin-0123456789abcdef admin\n")
	writeFile(t, key, "key")
	os.Chmod(tokens, 0o644)
	os.Chmod(key, 0o640)
	f := serverFlags{authTokensFile: tokens, tlsKey: key}
	got := f.secretFileWarnings()
	want := []string{
		"--auth-tokens-file " + tokens + " has mode -rw-r--r--: readable by group or others; chmod 600 it",
		"--tls-key " + key + " has mode -rw-r-----: readable by group or others; chmod 600 it",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("warnings %q, want %q", got, want)
	}
	os.Chmod(tokens, 0o600)
	os.Chmod(key, 0o400)
	if got := f.secretFileWarnings(); len(got) != 0 {
		t.Fatalf("warnings for files of mode 0600 and 0400: %q", got)
	}
}

// TestServerCommandFormsClusterAndStopsOnSignal runs three `quorumq
// server` commands in-process, as an operator would start them, and stops
// them the way a SIGTERM does (their context ends).
func TestServerCommandFormsClusterAndStopsOnSignal(t *testing.T) {
	ports, err := harness.FreePorts(9)
	if err != nil {
		t.Fatal(err)
	}
	addr := func(p int) string { return "127.0.0.1:" + strconv.Itoa(p) }
	var join []string
	for i := 0; i < 3; i++ {
		join = append(join, addr(ports[6+i]))
	}
	dir := t.TempDir()
	type server struct {
		cancel context.CancelFunc
		done   chan error
		api    string
	}
	var servers []server
	for i := 0; i < 3; i++ {
		cmd := serverCmd()
		cmd.SetArgs([]string{
			"--node-id", fmt.Sprintf("s%d", i+1),
			"--data-dir", filepath.Join(dir, fmt.Sprintf("s%d", i+1)),
			"--api-addr", addr(ports[i]),
			"--raft-addr", addr(ports[3+i]),
			"--gossip-addr", join[i],
			"--bootstrap-expect", "3",
			"--join", strings.Join(join, ","),
			"--log-level", "error",
		})
		cmd.SetErr(io.Discard)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- cmd.ExecuteContext(ctx) }()
		servers = append(servers, server{cancel, done, addr(ports[i])})
	}
	t.Cleanup(func() {
		for _, s := range servers {
			s.cancel()
		}
	})

	conn := func(a string) *grpc.ClientConn {
		c, err := grpc.NewClient(a, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	leaderOf := func(a string) string {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r, err := quorumqpb.NewClusterClient(conn(a)).Leader(ctx, &quorumqpb.LeaderRequest{})
		if err != nil {
			return ""
		}
		return r.GetLeaderApiAddr()
	}
	var leader string
	for deadline := time.Now().Add(20 * time.Second); leader == ""; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no leader within 20 s")
		}
		leader = leaderOf(servers[0].api)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := quorumqpb.NewQueueClient(conn(leader)).Enqueue(ctx, &quorumqpb.EnqueueRequest{
		Queue: "jobs", Messages: []*fsmpb.Message{{Body: []byte("x")}},
	}); err != nil {
		t.Fatalf("enqueue (auto-created queue) on the leader: %v", err)
	}
	// Message bodies are in the log and the snapshots: no other local
	// user may read them.
	if _, err := quorumqpb.NewClusterClient(conn(leader)).Snapshot(ctx, &quorumqpb.SnapshotRequest{}); err != nil {
		t.Fatalf("snapshot on the leader: %v", err)
	}
	snapshots := 0
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if strings.Contains(path, "snapshots"+string(filepath.Separator)) && !d.IsDir() {
			snapshots++
		}
		if info.Mode().Perm()&0o077 != 0 {
			return fmt.Errorf("%s has mode %v: readable by group or others", path, info.Mode().Perm())
		}
		return nil
	})
	if err != nil || snapshots == 0 {
		t.Fatalf("data dir modes: %v (%d snapshot files seen)", err, snapshots)
	}

	// Stop the leader first: it hands over and exits cleanly.
	li := -1
	for i, s := range servers {
		if s.api == leader {
			li = i
		}
	}
	servers[li].cancel()
	select {
	case err := <-servers[li].done:
		if err != nil {
			t.Fatalf("leader's server command: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("leader did not stop within 20 s")
	}
	other := servers[(li+1)%3].api
	if nl := leaderOf(other); nl == "" || nl == leader {
		t.Fatalf("after the leader stopped, %s reports leader %q", other, nl)
	}
	for i, s := range servers {
		if i == li {
			continue
		}
		s.cancel()
		if err := <-s.done; err != nil {
			t.Fatalf("server %d: %v", i+1, err)
		}
	}
}
