package cluster

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// backupTo streams a backup from node i of c into a file and returns its
// path.
func backupTo(t *testing.T, c *TestCluster, i int) string {
	t.Helper()
	stream, err := quorumqpb.NewClusterClient(c.Conn(t, i)).Backup(ctxT(t, 10*time.Second), &quorumqpb.BackupRequest{})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "backup.qq")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var size, got int64
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("backup stream: %v", err)
		}
		if size == 0 {
			size = chunk.GetSize()
		}
		n, err := f.Write(chunk.GetData())
		if err != nil {
			t.Fatal(err)
		}
		got += int64(n)
	}
	if got == 0 || got != size {
		t.Fatalf("backup: %d bytes written, header said %d", got, size)
	}
	return path
}

func TestBackupRestoreIntoFreshCluster(t *testing.T) {
	// No periodic tick: it moves the FSM clock and so the state hash,
	// which this test compares across two clusters.
	noTick := func(_ int, cfg *Config) { cfg.TickInterval = time.Hour }
	src := StartTestClusterWith(t, 3, noTick)
	li := src.Index(src.Leader(t))
	enqueue(t, src, li, "orders", "a", "b", "c", "d")
	enqueue(t, src, li, "audit", "x")
	q := quorumqpb.NewQueueClient(src.Conn(t, li))
	rcv, err := q.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: "orders", Max: 2, VisibilityNs: int64(time.Hour)})
	if err != nil || len(rcv.GetDeliveries()) != 2 {
		t.Fatalf("receive: %v", err)
	}
	if _, err := q.Ack(ctxT(t, 10*time.Second), &quorumqpb.AckRequest{Queue: "orders", Receipts: []*fsmpb.Receipt{rcv.GetDeliveries()[0].GetReceipt()}}); err != nil {
		t.Fatal(err)
	}
	hash := src.WaitReplicated(t)

	// A follower refuses: only the leader's state is known to hold every
	// acknowledged write.
	for i, n := range src.Nodes {
		if !n.IsLeader() {
			_, err := quorumqpb.NewClusterClient(src.Conn(t, i)).Backup(ctxT(t, 5*time.Second), &quorumqpb.BackupRequest{})
			if err == nil {
				stream, _ := quorumqpb.NewClusterClient(src.Conn(t, i)).Backup(ctxT(t, 5*time.Second), &quorumqpb.BackupRequest{})
				_, err = stream.Recv()
			}
			if err == nil || !strings.Contains(err.Error(), "not the leader") {
				t.Fatalf("backup from follower %s: %v, want not the leader", n.ID(), err)
			}
			break
		}
	}
	path := backupTo(t, src, li)

	dst := StartTestClusterWith(t, 3, func(i int, cfg *Config) {
		noTick(i, cfg)
		cfg.BootstrapExpect = 0
		if i == 0 {
			cfg.RestoreFrom = path
		}
	})
	leader := dst.Leader(t)
	if leader.ID() != "n1" {
		t.Fatalf("leader of the restored cluster is %s, want the restoring node n1", leader.ID())
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		servers, err := leader.configuration(ctxT(t, 5*time.Second))
		if err == nil && len(servers) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restored cluster did not grow to 3 voters: %v %v", servers, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := dst.WaitReplicated(t); got != hash {
		t.Fatalf("restored cluster state hash %s, want the backed-up cluster's %s", got, hash)
	}
	// And it serves the restored messages: orders had a, b leased (a
	// acked), c and d ready.
	info, err := quorumqpb.NewQueueClient(dst.Conn(t, 0)).GetQueue(ctxT(t, 10*time.Second), &quorumqpb.GetQueueRequest{Name: "orders"})
	if err != nil {
		t.Fatal(err)
	}
	if st := info.GetQueue().GetStats(); st.GetReady() != 2 || st.GetLeased() != 1 || st.GetAckedTotal() != 1 {
		t.Errorf("restored orders: ready %d leased %d acked %d, want 2 1 1", st.GetReady(), st.GetLeased(), st.GetAckedTotal())
	}
	enqueue(t, dst, 0, "orders", "e")
	dst.WaitReplicated(t)
}

func TestRestoreRefusals(t *testing.T) {
	dir := t.TempDir()
	base := Config{
		NodeID: "n1", APIAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0",
		LocalGossip: true, Logger: testLogger(),
	}

	bad := filepath.Join(dir, "bad.qq")
	if err := os.WriteFile(bad, []byte("QQFSMSNP\x00\x00\x00\x01garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := base
	cfg.DataDir, cfg.RestoreFrom = filepath.Join(dir, "a"), bad
	if _, err := Start(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "not a usable backup") {
		t.Errorf("restore from a corrupt file: %v, want not a usable backup", err)
	}

	cfg = base
	cfg.DataDir, cfg.RestoreFrom, cfg.BootstrapExpect = filepath.Join(dir, "b"), bad, 3
	if _, err := Start(context.Background(), cfg); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "bootstrap-expect 3") {
		t.Errorf("restore with bootstrap-expect 3: %v, want a config error naming it", err)
	}

	// A data dir with Raft state is never overwritten by a restore.
	src := StartTestCluster(t, 1)
	enqueue(t, src, 0, "q", "x")
	good := backupTo(t, src, 0)
	cfg = base
	cfg.DataDir, cfg.RestoreFrom = filepath.Join(dir, "c"), good
	n, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("restore into an empty dir: %v", err)
	}
	n.Kill()
	if _, err := Start(context.Background(), cfg); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "already has Raft state") {
		t.Errorf("restore into a used dir: %v, want a config error", err)
	}
}
