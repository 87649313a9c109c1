package jepsen

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/jepsen-style-tests/harness"
	"github.com/quorumq/quorumq/jepsen-style-tests/lazyfs"
)

// CaseConfig is one run: a cluster, the workloads, one schedule.
type CaseConfig struct {
	Name     string
	Seed     uint64
	Schedule Schedule
	Bin      string
	// ReportRoot is where the report folder <timestamp>-<seed>-<name> goes.
	ReportRoot string
	// Netns runs every node in its own network namespace; otherwise on
	// loopback (process faults only).
	Netns bool
	// Progress receives the progress line; nil shows none.
	Progress io.Writer
	// ExtraArgs are appended to every server's command line.
	ExtraArgs []string
	// FIFOOps bounds each FIFO queue's history (default 150).
	FIFOOps int
	// LazyFS puts every node's data dir on a lazyfs mount, for the power
	// and corruption nemeses (see lazyfs.Available).
	LazyFS bool
	// SmallDisks puts every node's data dir on a tmpfs of its own of
	// smallDiskSize, for the disk-full nemeses (see SmallDisksAvailable).
	// Not with LazyFS.
	SmallDisks bool
}

// OpCounts counts a workload's operations by outcome, overall and while a
// fault was in force.
type OpCounts struct {
	Total               int `json:"total"`
	OK                  int `json:"ok"`
	Failed              int `json:"failed"`
	Unknown             int `json:"unknown"`
	DuringFaults        int `json:"during_faults"`
	FailedDuringFaults  int `json:"failed_during_faults"`
	UnknownDuringFaults int `json:"unknown_during_faults"`
}

// Result is results.json: everything the checkers found in one run.
type Result struct {
	Case        string               `json:"case"`
	Seed        uint64               `json:"seed"`
	Network     string               `json:"network"` // netns or loopback
	Disk        string               `json:"disk"`    // lazyfs or plain
	ReportDir   string               `json:"report_dir"`
	Started     time.Time            `json:"started"`
	Seconds     float64              `json:"seconds"`
	Queues      []QueueResult        `json:"queues"`
	FIFO        *FIFOResult          `json:"fifo_linearizability,omitempty"`
	Convergence Convergence          `json:"convergence"`
	Ops         map[string]OpCounts  `json:"ops"`
	Faults      []FaultEvent         `json:"faults"`
	Windows     []Window             `json:"fault_windows"`
	Snapshots   map[string]Snapshots `json:"snapshots"`
	Valid       bool                 `json:"valid"`
	Problems    []string             `json:"problems,omitempty"`
}

// RunCase runs one case end to end and writes its report folder. The error
// is for harness failures (the cluster did not start); checker findings
// are in the Result.
func RunCase(ctx context.Context, cfg CaseConfig) (*Result, error) {
	started := time.Now()
	dir := filepath.Join(cfg.ReportRoot, fmt.Sprintf("%s-%d-%s", started.UTC().Format("20060102T150405Z"), cfg.Seed, cfg.Name))
	if err := os.MkdirAll(filepath.Join(dir, "nodes"), 0o755); err != nil {
		return nil, err
	}
	res := &Result{Case: cfg.Name, Seed: cfg.Seed, ReportDir: dir, Started: started.UTC(), Network: "loopback", Disk: "plain"}
	if cfg.FIFOOps == 0 {
		cfg.FIFOOps = 150
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x9e3779b97f4a7c15))
	ids := []string{"n1", "n2", "n3"}

	var netw *Network
	if cfg.Netns {
		var err error
		netw, err = NewNetwork(fmt.Sprintf("%d/%s", cfg.Seed, cfg.Name), ids)
		if err != nil {
			return nil, err
		}
		defer netw.Close()
		res.Network = "netns " + netw.Subnet.String()
	}
	dataDir, err := os.MkdirTemp("", "quorumq-jepsen-data-")
	if err != nil {
		return nil, err
	}
	removeData := func() { os.RemoveAll(dataDir) }
	unreg := registerCleanup(removeData)
	defer func() { unreg(); removeData() }()

	var disks map[string]*lazyfs.FS
	unmount := func() error { return nil }
	if cfg.LazyFS {
		disks, unmount, err = mountDisks(dataDir, ids)
		if err != nil {
			return res, err
		}
		// Deferred before cl.Close, so it runs after the nodes are
		// killed; on an interrupt it runs after the nodes' own cleanups,
		// which were registered later.
		unregMount := registerCleanup(func() { unmount() })
		defer func() { unregMount(); unmount() }()
		res.Disk = "lazyfs"
	}
	if cfg.SmallDisks {
		if cfg.LazyFS {
			return res, fmt.Errorf("case %s: small disks and lazyfs data dirs cannot be combined", cfg.Name)
		}
		unmount, err = mountSmallDisks(dataDir, ids)
		if err != nil {
			return res, err
		}
		unregMount := registerCleanup(func() { unmount() })
		defer func() { unregMount(); unmount() }()
		res.Disk = fmt.Sprintf("tmpfs %d MiB", smallDiskSize>>20)
	}

	extra := cfg.ExtraArgs
	if cfg.SmallDisks {
		// Small segments, so that the full disk refuses the log's next
		// segment during the fault, not only snapshots (diskfull.go);
		// before ExtraArgs, whose own --wal-segment-size wins.
		extra = append([]string{"--wal-segment-size", smallDiskSegmentSize}, extra...)
	}
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	cl, err := StartCluster(sctx, harness.ClusterConfig{Bin: cfg.Bin, DataDir: dataDir, LogDir: filepath.Join(dir, "nodes"), IDs: ids, ExtraArgs: extra,
		FakeClock: needsClockFiles(cfg.Schedule)}, netw)
	cancel()
	if err != nil {
		return res, err
	}
	defer cl.Close()

	rec, err := NewRecorder(filepath.Join(dir, "history.jsonl"))
	if err != nil {
		return res, err
	}
	defer rec.Close()
	nlog, err := NewNemesisLog(filepath.Join(dir, "nemesis.jsonl"), rec)
	if err != nil {
		return res, err
	}
	defer nlog.Close()

	workloads := Workloads()
	for _, wl := range workloads {
		if f, ok := wl.(*fifo); ok {
			f.maxOps = cfg.FIFOOps
		}
	}
	if err := createQueues(ctx, cl.APIAddrs(), workloads); err != nil {
		return res, err
	}

	world := &World{Addrs: cl.APIAddrs(), Rec: rec, Main: cfg.Schedule.Duration()}
	mainCtx, stopMain := context.WithCancel(ctx)
	defer stopMain()
	drainCtx, stopDrain := context.WithCancel(ctx)
	defer stopDrain()
	var wg sync.WaitGroup
	var clients []*client.Client
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for _, wl := range workloads {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		c, err := world.newClient(cctx)
		cancel()
		if err != nil {
			stopMain()
			stopDrain()
			wg.Wait()
			return res, fmt.Errorf("client for %s: %w", wl.Name(), err)
		}
		clients = append(clients, c)
		wg.Go(func() { wl.Run(mainCtx, drainCtx, world, c) })
	}

	env := &Env{Cluster: cl, Net: netw, Rand: rng, Disks: disks}
	prog := newProgress(cfg, rec)
	cfg.Schedule.Run(ctx, env, nlog, prog.phase)
	prog.phase("heal all")
	err = HealAll(env)
	nlog.add(faultEvent(rec.Since(), "all", "heal-all", "drop rules removed, every node running", err))

	// Drain: producers stop, consumers empty every queue on a healthy
	// cluster, so every message still in the cluster is seen.
	world.draining.Store(true)
	stopMain()
	prog.phase("drain")
	hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	if err := cl.WaitHealthy(hctx, len(ids)); err != nil {
		res.Problems = append(res.Problems, "cluster not healthy after heal: "+err.Error())
	}
	cancel()
	drainDone := make(chan struct{})
	go func() { wg.Wait(); close(drainDone) }()
	select {
	case <-drainDone:
	case <-time.After(45 * time.Second):
		res.Problems = append(res.Problems, "drain did not empty every queue within 45 s")
		stopDrain()
		<-drainDone
	}

	prog.phase("converge")
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	res.Convergence = cl.WaitConverged(cctx)
	cancel()
	prog.phase("check")
	prog.finish()
	// The nodes are not needed any more; a mount that cannot be unmounted
	// once they are dead is a harness problem worth reporting.
	cl.Close()
	if err := unmount(); err != nil {
		res.Problems = append(res.Problems, err.Error())
	}

	ops := rec.Ops()
	res.Faults = nlog.Events()
	res.Windows = nlog.Windows()
	for _, wl := range workloads {
		for _, spec := range wl.Specs() {
			res.Queues = append(res.Queues, CheckQueue(ops, spec))
		}
	}
	fr, err := CheckFIFO(ops, "fifo", 60*time.Second, filepath.Join(dir, "fifo-linearizability.html"))
	if err != nil {
		res.Problems = append(res.Problems, err.Error())
	}
	res.FIFO = &fr
	res.Ops = countOps(ops, res.Windows)
	res.Snapshots = countSnapshots(cl)
	for _, line := range logVerifyFailures(cl) {
		res.Problems = append(res.Problems, fmt.Sprintf("log verification: %.400s", line))
	}
	res.Seconds = time.Since(started).Seconds()

	for _, q := range res.Queues {
		for _, p := range q.Problems {
			res.Problems = append(res.Problems, fmt.Sprintf("%s (%s → %s%s): %s", q.Workload, q.Source, q.Sink, q.byProducer(), p))
		}
	}
	if fr.Result == "Illegal" {
		res.Problems = append(res.Problems, "FIFO history is not linearizable")
	}
	if !res.Convergence.Converged {
		res.Problems = append(res.Problems, "state hashes: "+res.Convergence.Problem)
	}
	for _, ev := range res.Faults {
		if ev.Error != "" {
			res.Problems = append(res.Problems, fmt.Sprintf("nemesis %s %s failed: %s", ev.Nemesis, ev.Action, ev.Error))
		}
	}
	res.Valid = len(res.Problems) == 0
	if err := writeResults(dir, res); err != nil {
		return res, err
	}
	if err := WriteHTML(filepath.Join(dir, "index.html"), res, ops); err != nil {
		return res, err
	}
	return res, nil
}

// createQueues creates every workload queue before any fault.
func createQueues(ctx context.Context, addrs []string, wls []Workload) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := client.New(cctx, addrs)
	if err != nil {
		return fmt.Errorf("setup client: %w", err)
	}
	defer c.Close()
	for _, wl := range wls {
		if s, ok := wl.(queueSetup); ok {
			if err := s.Setup(cctx, c); err != nil {
				return fmt.Errorf("create the queues of %s: %w", wl.Name(), err)
			}
			continue
		}
		for _, q := range wl.Queues() {
			if _, err := c.EnsureQueue(cctx, q, client.QueueSettings{}); err != nil {
				return fmt.Errorf("create queue %s: %w", q, err)
			}
		}
	}
	return nil
}

// countOps counts each workload's operations by outcome, and those whose
// interval overlaps a fault window.
func countOps(ops []Op, windows []Window) map[string]OpCounts {
	out := map[string]OpCounts{}
	for _, o := range ops {
		c := out[o.Workload]
		c.Total++
		during := false
		for _, w := range windows {
			if o.Start <= w.End && o.End >= w.Start {
				during = true
				break
			}
		}
		if during {
			c.DuringFaults++
		}
		switch o.Status {
		case StatusOK:
			c.OK++
		case StatusFail:
			c.Failed++
			if during {
				c.FailedDuringFaults++
			}
		default:
			c.Unknown++
			if during {
				c.UnknownDuringFaults++
			}
		}
		out[o.Workload] = c
	}
	return out
}

func writeResults(dir string, res *Result) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644)
}

// Summary is a one-table text rendering of a result, for test logs.
func (r *Result) Summary() string {
	var b []byte
	b = fmt.Appendf(b, "case %s seed %d (%s, data dirs %s), %.0f s, valid=%v, report %s\n", r.Case, r.Seed, r.Network, r.Disk, r.Seconds, r.Valid, r.ReportDir)
	b = fmt.Appendf(b, "  %-14s %-8s %9s %6s %6s %6s %6s %5s %4s %4s %4s %4s %5s %5s %6s %11s\n", "workload", "queue", "attempted", "ok", "fail", "unkn", "deliv", "lost", "dup", "unex", "recv", "2enq", "order", "early", "dedupW", "fail/unk@F")
	for _, q := range r.Queues {
		oc := r.Ops[q.Workload]
		b = fmt.Appendf(b, "  %-14s %-8s %9d %6d %6d %6d %6d %5d %4d %4d %4d %4d %5d %5d %6d %5d/%-5d\n", q.Workload, q.label(), q.Attempted, q.OK, q.Failed, q.Unknown,
			q.Delivered, q.Lost, q.Duplicated, q.Unexpected, q.Recovered, q.DoubleEnqueued, q.OrderViolations, q.EarlyRedeliveries, q.DedupWindowViolations, oc.FailedDuringFaults, oc.UnknownDuringFaults)
	}
	for _, q := range r.Queues {
		if g := q.Groups; g != nil {
			b = fmt.Appendf(b, "  groups of %s: %d groups, %d messages, %d acked, %d dead-lettered (DLQ read: %v); same receive %d, early delivery %d, ack order %d, gaps %d, duplicates %d, wrong group %d\n",
				q.Source, g.Groups, g.Messages, g.Acked, g.DeadLettered, g.DLQRead, g.SameReceive, g.EarlyDeliveries, g.AckOrder, g.Gaps, g.Duplicates, g.WrongGroup)
		}
	}
	if r.FIFO != nil {
		b = fmt.Appendf(b, "  fifo linearizability: %s (%d ops, %d unknown)\n", r.FIFO.Result, r.FIFO.Operations, r.FIFO.Unknown)
	}
	b = fmt.Appendf(b, "  state hashes converged: %v %v\n", r.Convergence.Converged, r.Convergence.Hashes)
	b = fmt.Appendf(b, "  snapshots taken/installed: %s\n", describeSnapshots(r.Snapshots))
	for _, w := range r.Windows {
		b = fmt.Appendf(b, "  fault %s %.1f–%.1f s\n", w.Nemesis, float64(w.Start)/1e9, float64(w.End)/1e9)
	}
	for _, p := range r.Problems {
		b = fmt.Appendf(b, "  PROBLEM: %s\n", p)
	}
	return string(b)
}

// progress is the one-line progress display of a run.
type progress struct {
	bar   *progressbar.ProgressBar
	w     io.Writer
	rec   *Recorder
	name  string
	mu    sync.Mutex
	cur   string
	stop  chan struct{}
	once  sync.Once
	total time.Duration
}

func newProgress(cfg CaseConfig, rec *Recorder) *progress {
	p := &progress{w: cfg.Progress, rec: rec, name: cfg.Name, stop: make(chan struct{}), total: cfg.Schedule.Duration()}
	if cfg.Progress == nil {
		return p
	}
	p.bar = progressbar.NewOptions64(int64(p.total/time.Second)+1,
		progressbar.OptionSetWriter(cfg.Progress),
		progressbar.OptionSetWidth(20),
		progressbar.OptionThrottle(500*time.Millisecond),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionShowDescriptionAtLineEnd(),
	)
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				p.render()
			}
		}
	}()
	return p
}

func (p *progress) phase(s string) {
	p.mu.Lock()
	p.cur = s
	p.mu.Unlock()
	p.render()
}

func (p *progress) render() {
	if p.bar == nil {
		return
	}
	p.mu.Lock()
	cur := p.cur
	p.mu.Unlock()
	ok, fail, unk := p.rec.Counts()
	elapsed := time.Duration(p.rec.Since())
	_ = p.bar.Set64(min(int64(elapsed/time.Second), p.bar.GetMax64()))
	p.bar.Describe(fmt.Sprintf("%s | %s | ops ok %d fail %d unknown %d", p.name, cur, ok, fail, unk))
}

func (p *progress) finish() {
	p.once.Do(func() {
		close(p.stop)
		if p.bar != nil {
			_ = p.bar.Finish()
			fmt.Fprintln(p.w)
		}
	})
}

// SummaryMarkdown renders several cases as one markdown table: per case
// (nemesis) and workload queue, the checker's counts and the operations
// that failed or were unknown while a fault was in force.
func SummaryMarkdown(results []*Result) string {
	var b []byte
	b = append(b, "| case | seed | workload | queue | attempted | ok | lost | duplicated | unexpected | recovered | 2×enq | order | early redelivery | dedup window | failed / unknown ops during faults | verdict |\n"...)
	b = append(b, "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"...)
	for _, r := range results {
		for _, q := range r.Queues {
			oc := r.Ops[q.Workload]
			verdict := "ok"
			if !q.Valid {
				verdict = "**" + fmt.Sprint(q.Problems) + "**"
			}
			b = fmt.Appendf(b, "| %s | %d | %s | %s | %d | %d | %d | %d | %d | %d | %d | %d | %d | %d | %d / %d | %s |\n", r.Case, r.Seed, q.Workload, q.label(),
				q.Attempted, q.OK, q.Lost, q.Duplicated, q.Unexpected, q.Recovered, q.DoubleEnqueued, q.OrderViolations, q.EarlyRedeliveries, q.DedupWindowViolations, oc.FailedDuringFaults, oc.UnknownDuringFaults, verdict)
		}
	}
	b = append(b, "\n| case | data dirs | FIFO linearizability | state hashes equal | snapshots taken/installed | problems |\n| --- | --- | --- | --- | --- | --- |\n"...)
	for _, r := range results {
		fifo := "-"
		if r.FIFO != nil {
			fifo = fmt.Sprintf("%s (%d ops, %d unknown)", r.FIFO.Result, r.FIFO.Operations, r.FIFO.Unknown)
		}
		b = fmt.Appendf(b, "| %s | %s | %s | %v | %s | %d |\n", r.Case, r.Disk, fifo, r.Convergence.Converged, describeSnapshots(r.Snapshots), len(r.Problems))
	}
	return string(b)
}

// Snapshots counts one node's Raft snapshots during a run, from its log.
type Snapshots struct {
	Taken     int `json:"taken"`
	Installed int `json:"installed"`
}

// countSnapshots reads every node's log for raft's "snapshot complete"
// and "Installed remote snapshot" lines, so a report shows that snapshots
// and their installs happened during the faults.
func countSnapshots(c *Cluster) map[string]Snapshots {
	out := map[string]Snapshots{}
	for _, n := range c.Nodes {
		b, err := os.ReadFile(n.LogPath)
		if err != nil {
			continue
		}
		out[n.ID] = Snapshots{Taken: bytes.Count(b, []byte("snapshot complete up to")), Installed: bytes.Count(b, []byte("Installed remote snapshot"))}
	}
	return out
}

// logVerifyFailed is in the line a server logs when its online log
// verification finds that its log differs from what the leader wrote
// (cluster/logverify.go). No fault of the suite changes a running node's
// log on disk (the corruption nemesis damages a stopped node, which is
// then refused and replaced), so any such line is a problem: corruption
// the faults did not cause, or a verification that is wrong.
const logVerifyFailed = "log verification failed"

// logVerifyFailures returns every line of the nodes' logs that reports a
// log verification mismatch, prefixed with the node's ID.
func logVerifyFailures(c *Cluster) []string {
	var out []string
	for _, n := range c.Nodes {
		b, err := os.ReadFile(n.LogPath)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, logVerifyFailed) {
				out = append(out, n.ID+": "+line)
			}
		}
	}
	return out
}

func describeSnapshots(m map[string]Snapshots) string {
	var parts []string
	for _, id := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s %d/%d", id, m[id].Taken, m[id].Installed))
	}
	return strings.Join(parts, ", ")
}
