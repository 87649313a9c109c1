package cluster

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

// boltClusterWithMessages starts three nodes on raft-boltdb, as the
// release before raft-wal made them, enqueues bodies and stops every node.
func boltClusterWithMessages(t *testing.T, bodies ...string) *TestCluster {
	t.Helper()
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) { cfg.LogStore = LogStoreBolt })
	li := c.Index(c.Leader(t))
	enqueue(t, c, li, "q", bodies...)
	c.WaitReplicated(t)
	for i := range c.Nodes {
		c.Kill(i)
	}
	for i := range c.configs {
		c.configs[i].LogStore = LogStoreWAL // what a new release's default says
	}
	return c
}

// TestMigrateLogStoreKeepsMessages converts every node of a bolt cluster
// to the wal offline; the cluster comes back on the wal with every message.
func TestMigrateLogStoreKeepsMessages(t *testing.T) {
	c := boltClusterWithMessages(t, "a", "b", "c")
	for _, cfg := range c.configs {
		m, err := MigrateLogStore(context.Background(), cfg.DataDir, testLogger())
		if err != nil {
			t.Fatalf("migrate %s: %v", cfg.DataDir, err)
		}
		if !m.Converted || m.Last == 0 {
			t.Fatalf("migrate %s: %+v, want a conversion of a log that has entries", cfg.DataDir, m)
		}
		for _, p := range []string{raftDBFile, walMigratingName} {
			if _, err := os.Stat(filepath.Join(cfg.DataDir, p)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%s left after the conversion (err %v)", p, err)
			}
		}
		again, err := MigrateLogStore(context.Background(), cfg.DataDir, testLogger())
		if err != nil || again.Converted {
			t.Fatalf("second conversion of %s: %+v, %v; want nothing done", cfg.DataDir, again, err)
		}
	}
	for i := range c.configs {
		if n := c.Restart(t, i); n.storeKind != LogStoreWAL {
			t.Fatalf("%s runs on %q after the conversion", n.ID(), n.storeKind)
		}
	}
	li := c.Index(c.Leader(t))
	enqueue(t, c, li, "q", "d")
	c.WaitReplicated(t)
	if got := strings.Join(receiveAll(t, c, li, "q"), ","); got != "a,b,c,d" {
		t.Fatalf("received %q, want a,b,c,d", got)
	}
}

// TestInterruptedMigrationLeavesAUsableDataDir stops a conversion at each
// point a crash can stop it: the node starts on raft.db before the wal is
// complete, on the wal after, and keeps its messages either way.
func TestInterruptedMigrationLeavesAUsableDataDir(t *testing.T) {
	for _, tc := range []struct{ stop, want string }{{"copied", LogStoreBolt}, {"renamed", LogStoreWAL}} {
		t.Run("after "+tc.stop, func(t *testing.T) {
			c := boltClusterWithMessages(t, "x", "y")
			dir := c.configs[0].DataDir
			migrateStop = tc.stop
			_, err := MigrateLogStore(context.Background(), dir, testLogger())
			migrateStop = ""
			if !errors.Is(err, errMigrateStopped) {
				t.Fatalf("conversion stopped after %s: %v", tc.stop, err)
			}
			n := c.Restart(t, 0)
			if n.storeKind != tc.want {
				t.Fatalf("after a conversion stopped once %s: node runs on %q, want %q", tc.stop, n.storeKind, tc.want)
			}
			for _, p := range []string{walMigratingName, map[string]string{LogStoreBolt: walDirName, LogStoreWAL: raftDBFile}[tc.want]} {
				if _, err := os.Stat(filepath.Join(dir, p)); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("%s still in the data dir after the start resolved it (err %v)", p, err)
				}
			}
			c.Restart(t, 1)
			c.Restart(t, 2)
			li := c.Index(c.Leader(t))
			c.WaitReplicated(t)
			if got := strings.Join(receiveAll(t, c, li, "q"), ","); got != "x,y" {
				t.Fatalf("received %q, want x,y", got)
			}
		})
	}
}

// TestMigrateRefusals: a data dir that is not quorumq's, and one whose
// store another process holds, are refused with errors naming them.
func TestMigrateRefusals(t *testing.T) {
	empty := t.TempDir()
	if _, err := MigrateLogStore(context.Background(), empty, testLogger()); !errors.Is(err, ErrDataDir) || !strings.Contains(err.Error(), filepath.Join(empty, identityFile)) {
		t.Fatalf("migrate a dir without node.json: %v; want ErrDataDir naming it", err)
	}
	c := StartTestClusterWith(t, 1, func(_ int, cfg *Config) { cfg.LogStore = LogStoreBolt })
	c.Leader(t)
	dir := c.configs[0].DataDir
	_, err := MigrateLogStore(context.Background(), dir, testLogger())
	if !errors.Is(err, ErrDataDir) || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("migrate the data dir of a running node: %v; want ErrDataDir saying it is locked", err)
	}
	if _, err := os.Stat(filepath.Join(dir, walDirName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused conversion left %s (err %v)", walDirName, err)
	}
}

// TestMigrateCopiesTheLogAfterASnapshotGap: a follower that installed a
// snapshot keeps its older entries and appends after the snapshot, so its
// raft.db has a hole; the wal holds none, so the entries before the hole
// (covered by the snapshot) are left out.
func TestMigrateCopiesTheLogAfterASnapshotGap(t *testing.T) {
	store := raft.NewInmemStore()
	logs := append(commandLogs(t, 5, 7, 1), commandLogs(t, 20, 22, 2)...)
	if err := store.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	src, m, err := contiguousTail(store)
	if err != nil {
		t.Fatal(err)
	}
	if m.First != 20 || m.Last != 22 || m.Skipped != 3 {
		t.Fatalf("contiguous tail %+v, want 20..22 with 3 skipped", m)
	}
	dir := filepath.Join(t.TempDir(), walDirName)
	if err := copyToWAL(context.Background(), dir, src, raft.NewInmemStore(), testLogger()); err != nil {
		t.Fatal(err)
	}
	w, err := openWAL(dir, 0, testLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if first, last, _ := indexes(w.LogStore); first != 20 || last != 22 {
		t.Fatalf("wal holds %d..%d, want 20..22", first, last)
	}
}
