package jepsen

// The suite's cases are split over two test binaries, so that each stays
// within go test's 10-minute timeout on two cores while they run side by
// side: TestJepsen in this package runs the process, network and clock
// faults, the mixed schedule, the long partition and the redrive case;
// TestJepsenDisk in ./disk runs the power failures, the corruption and
// the full disks.

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"math/rand/v2"

	"github.com/quorumq/quorumq/jepsen-style-tests/lazyfs"
)

var (
	seedFlag = flag.Uint64("seed", 0, "seed of every case's fault schedule (0: a fresh one per case; also QUORUMQ_JEPSEN_SEED)")
	longFlag = flag.Bool("long", false, "run the long mixed schedules (also QUORUMQ_JEPSEN_LONG=1)")
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds cmd/quorumq once per test binary.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "quorumq-jepsen-bin-")
		if err != nil {
			buildErr = err
			return
		}
		registerCleanup(func() { os.RemoveAll(dir) })
		binPath, buildErr = BuildBinary(dir)
	})
	if buildErr != nil {
		t.Fatalf("building the server: %v", buildErr)
	}
	return binPath
}

func caseSeed() uint64 {
	if *seedFlag != 0 {
		return *seedFlag
	}
	if s := os.Getenv("QUORUMQ_JEPSEN_SEED"); s != "" {
		if v, err := strconv.ParseUint(s, 10, 64); err == nil && v != 0 {
			return v
		}
	}
	return rand.Uint64()>>1 | 1
}

// reportsDir is where report folders go, relative to the test's working
// directory (its package's folder).
var reportsDir = "reports"

// SetReportsDir sets where report folders go, relative to the test's
// working directory, unless QUORUMQ_JEPSEN_REPORTS says: ./disk writes
// them into this package's reports folder too.
func SetReportsDir(dir string) { reportsDir = dir }

func reportRoot() string {
	if d := os.Getenv("QUORUMQ_JEPSEN_REPORTS"); d != "" {
		return d
	}
	abs, _ := filepath.Abs(reportsDir)
	return abs
}

func longProfile() bool { return *longFlag || os.Getenv("QUORUMQ_JEPSEN_LONG") == "1" }

// shortSchedule runs one nemesis twice with quiet periods between: about
// 20 s of faults and workload per case.
func shortSchedule(ns ...Nemesis) Schedule {
	return Schedule{Nemeses: ns, Cycles: 2, Quiet: [2]time.Duration{2 * time.Second, 3 * time.Second}, Fault: [2]time.Duration{4 * time.Second, 6 * time.Second}}
}

// diskFullLeaderSchedule is the short profile's disk-full-leader case:
// two injections, each held 8 to 12 s (so that the leader's snapshots,
// every 3 s, meet the full disk too), about 35 s of schedule.
func diskFullLeaderSchedule() Schedule {
	return Schedule{Nemeses: []Nemesis{&diskFullLeader{}}, Cycles: 2, Quiet: [2]time.Duration{2 * time.Second, 3 * time.Second}, Fault: [2]time.Duration{8 * time.Second, 12 * time.Second}}
}

// SuitePart is one of the two halves of the suite, each run by its own
// test binary.
type SuitePart struct {
	// Test and Package name the test that runs the part, for the replay
	// line printed at the start of every case.
	Test, Package string
	// Disk selects the cases whose nemeses need lazyfs mounts or small
	// disks; the other part runs every other case.
	Disk bool
}

var (
	// NetworkPart is TestJepsen's half.
	NetworkPart = SuitePart{Test: "TestJepsen", Package: "./jepsen-style-tests"}
	// DiskPart is TestJepsenDisk's half (package ./disk).
	DiskPart = SuitePart{Test: "TestJepsenDisk", Package: "./jepsen-style-tests/disk", Disk: true}
)

// diskCase reports whether a nemesis belongs to the disk part.
func diskCase(n Nemesis) bool { return n.NeedsLazyFS() || needsSmallDisks(n) }

// RunSuite runs part of the suite: in the short profile one case per
// nemesis, plus a short mixed schedule in the network part; in the long
// profile schedules of several minutes. The redrive case (redrive.go)
// runs beside the network part's cases in both. Partition cases need
// network namespaces and skip with the reason when they are unavailable;
// the process faults then run on loopback.
func RunSuite(t *testing.T, part SuitePart) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping: the jepsen suite starts real clusters; run without -short")
	}
	netnsOK, why := CanUseNetns()
	if os.Getenv("QUORUMQ_JEPSEN_NETNS") == "0" {
		netnsOK, why = false, "disabled by QUORUMQ_JEPSEN_NETNS=0"
	}
	lazyErr := lazyfs.Available()
	smallErr := SmallDisksAvailable()
	type tc struct {
		name  string
		sched Schedule
	}
	// cases run one after another; beside runs alongside them.
	var cases, beside []tc
	// available lists the nemeses this machine can run, with or without
	// those that need lazyfs mounts. Those that need small disks are never
	// combined with lazyfs mounts.
	available := func(disk bool) []Nemesis {
		var out []Nemesis
		for _, n := range Nemeses() {
			if _, long := n.(longPartition); long {
				continue // its fault needs 60 s or more; mixed schedules hold faults for seconds
			}
			if needsSmallDisks(n) && (disk || smallErr != nil) {
				continue
			}
			if (netnsOK || !n.NeedsNetwork()) && (!n.NeedsLazyFS() || disk && lazyErr == nil) {
				out = append(out, n)
			}
		}
		return out
	}
	switch {
	case longProfile() && !part.Disk:
		cases = append(cases,
			tc{"mixed-long-1", Schedule{Nemeses: available(false), Cycles: 14, Quiet: [2]time.Duration{3 * time.Second, 8 * time.Second}, Fault: [2]time.Duration{5 * time.Second, 12 * time.Second}}},
			tc{"mixed-long-2", Schedule{Nemeses: available(false), Cycles: 14, Quiet: [2]time.Duration{2 * time.Second, 6 * time.Second}, Fault: [2]time.Duration{3 * time.Second, 15 * time.Second}}},
		)
		cases = append(cases, tc{"long-partition-long", longPartitionSchedule(2, [2]time.Duration{60 * time.Second, 120 * time.Second})})
	case longProfile():
		var disk []Nemesis
		for _, n := range available(true) {
			if n.NeedsLazyFS() {
				disk = append(disk, n)
			}
		}
		if len(disk) > 0 {
			cases = append(cases,
				tc{"disk-long", Schedule{Nemeses: disk, Cycles: 16, Quiet: [2]time.Duration{3 * time.Second, 8 * time.Second}, Fault: [2]time.Duration{4 * time.Second, 10 * time.Second}}},
				tc{"mixed-long-disk", Schedule{Nemeses: available(true), Cycles: 16, Quiet: [2]time.Duration{2 * time.Second, 6 * time.Second}, Fault: [2]time.Duration{3 * time.Second, 12 * time.Second}}},
			)
		} else {
			t.Logf("long profile without the power and corruption cases: %v", lazyErr)
		}
	default:
		for _, n := range Nemeses() {
			if diskCase(n) != part.Disk {
				continue
			}
			if _, long := n.(longPartition); long {
				// One cut of 60 to 120 s. It runs beside the other cases,
				// not after them, so that the short profile stays within
				// go test's 10-minute timeout on two cores; while the cut
				// holds, its cluster mostly waits.
				beside = append(beside, tc{n.Name(), longPartitionSchedule(1, [2]time.Duration{60 * time.Second, 120 * time.Second})})
				continue
			}
			if _, leader := n.(*diskFullLeader); leader {
				// About 50 s in all, beside the others too: in line it
				// would take the short profile past the timeout as well.
				beside = append(beside, tc{n.Name(), diskFullLeaderSchedule()})
				continue
			}
			cases = append(cases, tc{n.Name(), shortSchedule(n)})
		}
		if !part.Disk {
			cases = append(cases, tc{"mixed", Schedule{Nemeses: available(false), Cycles: 3, Quiet: [2]time.Duration{time.Second, 3 * time.Second}, Fault: [2]time.Duration{3 * time.Second, 5 * time.Second}}})
		}
	}
	var (
		resultsMu sync.Mutex
		results   []*Result
	)
	defer func() {
		if len(results) == 0 {
			return
		}
		md := SummaryMarkdown(results)
		path := filepath.Join(reportRoot(), "summary-"+time.Now().UTC().Format("20060102T150405Z")+".md")
		if err := os.WriteFile(path, []byte(md), 0o644); err != nil {
			t.Errorf("summary: %v", err)
		}
		t.Logf("summary of %d cases (%s):\n%s", len(results), path, md)
	}()
	run := func(c tc) func(t *testing.T) {
		return func(t *testing.T) {
			needsNet, needsDisk, needsSmall := false, false, false
			for _, n := range c.sched.Nemeses {
				needsNet = needsNet || n.NeedsNetwork()
				needsDisk = needsDisk || n.NeedsLazyFS()
				needsSmall = needsSmall || needsSmallDisks(n)
			}
			if len(c.sched.Nemeses) == 1 && needsNet && !netnsOK {
				t.Skipf("skipping partition case: network namespaces unavailable (%s); run as root with ip and nft", why)
			}
			if needsDisk && lazyErr != nil {
				t.Skipf("skipping power/corruption case: %v", lazyErr)
			}
			if needsSmall && smallErr != nil {
				t.Skipf("skipping disk-full case: %v", smallErr)
			}
			seed := caseSeed()
			t.Logf("seed %d (replay: go test %s -run '%s/%s$' -seed %d)", seed, part.Package, part.Test, c.name, seed)
			res, err := RunCase(context.Background(), CaseConfig{
				Name: c.name, Seed: seed, Schedule: c.sched, Bin: binary(t), ReportRoot: reportRoot(),
				Netns: netnsOK, Progress: os.Stderr, LazyFS: needsDisk, SmallDisks: needsSmall,
				// Small snapshot thresholds make snapshots, log compaction
				// and snapshot installs happen within a short run, and a
				// log-verification checkpoint every 250 ms (a range within
				// --trailing-logs at the suite's load) has every node
				// verify its log under the faults.
				ExtraArgs: []string{"--snapshot-threshold", "1024", "--snapshot-interval", "3s", "--trailing-logs", "256", "--log-verify-interval", "250ms", "--log-level", "debug"},
			})
			if res != nil {
				t.Logf("report: %s", res.ReportDir)
			}
			if err != nil {
				t.Fatalf("harness: %v", err)
			}
			resultsMu.Lock()
			results = append(results, res)
			resultsMu.Unlock()
			t.Log("\n" + res.Summary())
			if !res.Valid {
				t.Errorf("checkers found problems (seed %d):\n%s", seed, res.Summary())
			}
		}
	}
	var wg sync.WaitGroup
	for _, c := range beside {
		wg.Go(func() { t.Run(c.name, run(c)) })
	}
	// The redrive case (about 20 s) runs beside the others too, so that
	// it adds nothing to the package's time.
	if !part.Disk {
		wg.Go(func() { t.Run("redrive-kill-partition", redriveCase(netnsOK, why)) })
	}
	for _, c := range cases {
		t.Run(c.name, run(c))
	}
	wg.Wait()
}

// redriveCase runs RunRedriveCase: a redrive of 300 dead letters while
// the leader is killed and the new one is cut off. It needs network
// namespaces for the partition and skips without them.
func redriveCase(netnsOK bool, why string) func(t *testing.T) {
	return func(t *testing.T) {
		if !netnsOK {
			t.Skipf("skipping redrive case: network namespaces unavailable (%s); run as root with ip and nft", why)
		}
		seed := caseSeed()
		t.Logf("seed %d (replay: go test ./jepsen-style-tests -run 'TestJepsen/redrive-kill-partition$' -seed %d)", seed, seed)
		res, err := RunRedriveCase(context.Background(), RedriveCaseConfig{Seed: seed, Bin: binary(t), ReportRoot: reportRoot(), Netns: true,
			ExtraArgs: []string{"--snapshot-threshold", "1024", "--snapshot-interval", "3s", "--trailing-logs", "256", "--log-level", "debug"}})
		if res != nil {
			t.Logf("report: %s", res.ReportDir)
		}
		if err != nil {
			t.Fatalf("harness: %v", err)
		}
		t.Logf("redrive case: %.0f s, %d dead letters, %d left in the DLQ, %d in the target, calls %v, faults %v",
			res.Seconds, res.Check.DeadLetters, res.Check.InDLQ, res.Check.InTarget, res.Calls, res.Faults)
		if !res.Valid {
			t.Errorf("redrive case found problems (seed %d): %v", seed, res.Problems)
		}
	}
}
