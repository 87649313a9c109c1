package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/quorumq/quorumq/cluster"
	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// TestDataMigrateLog: a one-node cluster on raft-boltdb takes a message
// and stops; `quorumq data migrate-log` converts its data dir; the node
// starts on the wal and hands the message out.
func TestDataMigrateLog(t *testing.T) {
	if _, err := execute(t, "data", "migrate-log"); err == nil || !strings.Contains(err.Error(), "--data-dir is required") {
		t.Fatalf("migrate-log without --data-dir: %v", err)
	}
	dir := filepath.Join(t.TempDir(), "n1")
	start := func(store string) *cluster.Node {
		t.Helper()
		n, err := cluster.Start(context.Background(), cluster.Config{
			NodeID: "n1", DataDir: dir, LogStore: store, BootstrapExpect: 1, AutoCreateQueues: true,
			APIAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0", LocalGossip: true,
			Logger: slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if _, err := n.WaitLeader(ctx); err != nil {
			t.Fatal(err)
		}
		return n
	}
	queue := func(n *cluster.Node) quorumqpb.QueueClient {
		conn, err := grpc.NewClient(n.APIAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return quorumqpb.NewQueueClient(conn)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	n := start(cluster.LogStoreBolt)
	if _, err := queue(n).Enqueue(ctx, &quorumqpb.EnqueueRequest{Queue: "q", Messages: []*fsmpb.Message{{Body: []byte("kept")}}}); err != nil {
		t.Fatal(err)
	}
	n.Close(ctx)

	out, err := execute(t, "data", "migrate-log", "--data-dir", dir, "--log-level", "error")
	if err != nil || !strings.Contains(out, "converted to the wal log store: log entries 1 to") {
		t.Fatalf("migrate-log: %q, %v", out, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "raft.db")); !os.IsNotExist(err) {
		t.Fatalf("raft.db still there after the conversion (err %v)", err)
	}
	if out, err := execute(t, "data", "migrate-log", "--data-dir", dir, "--log-level", "error"); err != nil || !strings.Contains(out, "already uses the wal") {
		t.Fatalf("second migrate-log: %q, %v", out, err)
	}

	n = start("")
	defer n.Close(ctx)
	resp, err := queue(n).Receive(ctx, &quorumqpb.ReceiveRequest{Queue: "q", Max: 10, AutoAck: true})
	if err != nil || len(resp.GetDeliveries()) != 1 || string(resp.GetDeliveries()[0].GetBody()) != "kept" {
		t.Fatalf("receive after the conversion: %v, %v; want the message kept", resp.GetDeliveries(), err)
	}
}
