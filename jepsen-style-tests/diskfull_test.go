package jepsen

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSmallDiskFillsAndGrows: the filler fills a data dir's tmpfs until
// a write of the node's gets ENOSPC, and growing the tmpfs makes room
// again without removing the filler.
func TestSmallDiskFillsAndGrows(t *testing.T) {
	if err := SmallDisksAvailable(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	dataDir := t.TempDir()
	unmount, err := mountSmallDisks(dataDir, []string{"n1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unmount(); err != nil {
			t.Error(err)
		}
	})
	dir := filepath.Join(dataDir, "n1")
	size, err := smallDisk("test", dir)
	if err != nil || size != smallDiskSize {
		t.Fatalf("smallDisk(%s) = %d, %v; want %d", dir, size, err, smallDiskSize)
	}
	if _, err := smallDisk("test", dataDir); err == nil {
		t.Fatalf("smallDisk accepts %s, which is not a tmpfs", dataDir)
	}
	filler := filepath.Join(dir, "filler")
	filled, err := fillDisk(filler, true)
	if err != nil {
		t.Fatal(err)
	}
	if filled < smallDiskSize-1<<20 {
		t.Fatalf("filled %d bytes of a %d-byte tmpfs", filled, smallDiskSize)
	}
	write := func() error { return os.WriteFile(filepath.Join(dir, "raft.db"), make([]byte, 64<<10), 0o644) }
	if err := write(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("a write to the full disk: %v, want ENOSPC", err)
	}
	if _, err := growDisk(dir, smallDiskGrowth); err != nil {
		t.Fatal(err)
	}
	if err := write(); err != nil {
		t.Fatalf("a write after growing the disk: %v", err)
	}
	if _, err := fillDisk(filepath.Join(dir, "missing"), false); err == nil {
		t.Fatal("a top-up created a filler: it would fill whatever disk is under an unmounted data dir")
	}
}

// diskNeverFreed is disk-full-follower whose heal gives no space back.
type diskNeverFreed struct{ diskFullFollower }

func (d *diskNeverFreed) Name() string { return "disk-full-follower-never-freed" }

func (d *diskNeverFreed) Heal(ctx context.Context, env *Env) (string, error) {
	n := d.victim
	if n == nil {
		return "", nil
	}
	d.victim = nil
	return d.verify(ctx, env, n, n.ID+"'s disk left full")
}

// TestDiskFullNemesisBitesInTheSuite is the proof that the disk-full
// case can fail: a follower whose disk stays full cannot apply what the
// others apply, so the heal's catch-up check and the runner's state-hash
// convergence must both report it.
func TestDiskFullNemesisBitesInTheSuite(t *testing.T) {
	nem := &diskNeverFreed{}
	t.Cleanup(func() {
		if nem.stopFill != nil {
			nem.stopFill()
		}
	})
	res := runMustFail(t, CaseConfig{
		Name: nem.Name(), SmallDisks: true, Netns: true,
		Schedule: Schedule{Nemeses: []Nemesis{nem}, Cycles: 1, Quiet: [2]time.Duration{2 * time.Second, 2 * time.Second}, Fault: [2]time.Duration{4 * time.Second, 4 * time.Second}},
	}, SmallDisksAvailable, "a follower's disk never had space again")
	if res.Convergence.Converged {
		t.Fatalf("the nodes converged although one could not write its log: %v", res.Convergence.Applied)
	}
	healFailed := false
	for _, ev := range res.Faults {
		healFailed = healFailed || ev.Action == "heal" && ev.Error != ""
	}
	if !healFailed {
		t.Fatalf("the heal did not report the follower that never caught up: %v", res.Faults)
	}
}

// TestDiskFullLeaderNemesisBitesInTheSuite is the proof that the
// disk-full-leader case can fail: with the disk guard off the leader
// admits enqueues and queue creation on its full disk, and wal segments
// of 64 MiB (preallocated) keep it appending, and leading, through the
// injection. The injection must fail, naming the probe the guard did not
// refuse, and so must the case.
func TestDiskFullLeaderNemesisBitesInTheSuite(t *testing.T) {
	nem := &diskFullLeader{}
	res := runMustFail(t, CaseConfig{
		Name: "disk-full-leader-guard-off", SmallDisks: true, Netns: true,
		ExtraArgs: []string{"--min-free-disk", "off", "--wal-segment-size", "64MiB"},
		Schedule:  Schedule{Nemeses: []Nemesis{nem}, Cycles: 1, Quiet: [2]time.Duration{2 * time.Second, 2 * time.Second}, Fault: [2]time.Duration{4 * time.Second, 4 * time.Second}},
	}, SmallDisksAvailable, "the leader's disk guard was off")
	for _, ev := range res.Faults {
		if ev.Action == "inject" && strings.Contains(ev.Error, "did not refuse the probe") {
			return
		}
	}
	t.Fatalf("no injection reported the probe the disk guard did not refuse: %v", res.Faults)
}
