package jepsen

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/jepsen-style-tests/harness"
)

// The redrive case: a dead-letter queue full of dead letters is redriven
// into a target queue, in small paced batches, while the leader is
// killed and then the new leader is cut off by a partition. Each batch is
// one Raft command that deletes its messages from the DLQ and enqueues
// them in the target, so whatever the faults do, every dead letter must
// end up exactly once, in the DLQ or in the target: never in both, never
// in neither. CheckRedrive is the checker.

// RedriveCheck is what CheckRedrive found.
type RedriveCheck struct {
	DeadLetters int `json:"dead_letters"` // in the DLQ before the redrive
	InDLQ       int `json:"in_dlq"`       // left in the DLQ after it
	InTarget    int `json:"in_target"`    // in the target after it
	// Lost: in neither. InBoth: in the DLQ and the target. Duplicated:
	// more than once in one queue. Unexpected: never a dead letter.
	Lost       []string `json:"lost,omitempty"`
	InBoth     []string `json:"in_both,omitempty"`
	Duplicated []string `json:"duplicated,omitempty"`
	Unexpected []string `json:"unexpected,omitempty"`
	Valid      bool     `json:"valid"`
	Problems   []string `json:"problems,omitempty"`
}

// CheckRedrive checks that each of deadLetters (message bodies, each
// unique) is exactly once in inDLQ or inTarget (the bodies each queue
// holds after the redrive), and that nothing else is in either.
func CheckRedrive(deadLetters, inDLQ, inTarget []string) RedriveCheck {
	r := RedriveCheck{DeadLetters: len(deadLetters), InDLQ: len(inDLQ), InTarget: len(inTarget)}
	want := map[string]bool{}
	for _, v := range deadLetters {
		want[v] = true
	}
	count := func(vs []string) map[string]int {
		m := map[string]int{}
		for _, v := range vs {
			m[v]++
		}
		return m
	}
	dlq, target := count(inDLQ), count(inTarget)
	for _, m := range []map[string]int{dlq, target} {
		for v, n := range m {
			if !want[v] {
				r.Unexpected = append(r.Unexpected, v)
			} else if n > 1 {
				r.Duplicated = append(r.Duplicated, v)
			}
		}
	}
	for v := range want {
		switch {
		case dlq[v] > 0 && target[v] > 0:
			r.InBoth = append(r.InBoth, v)
		case dlq[v] == 0 && target[v] == 0:
			r.Lost = append(r.Lost, v)
		}
	}
	for _, s := range [][]string{r.Lost, r.InBoth, r.Duplicated, r.Unexpected} {
		sort.Strings(s)
	}
	add := func(what string, vs []string) {
		if len(vs) > 0 {
			r.Problems = append(r.Problems, fmt.Sprintf("%d %s: %.200v", len(vs), what, vs))
		}
	}
	add("dead letters in neither the DLQ nor the target", r.Lost)
	add("dead letters in both the DLQ and the target", r.InBoth)
	add("messages more than once in one queue", r.Duplicated)
	add("messages that were never dead letters", r.Unexpected)
	r.Valid = len(r.Problems) == 0
	return r
}

// RedriveCaseConfig is one run of the redrive case.
type RedriveCaseConfig struct {
	Seed       uint64
	Bin        string
	ReportRoot string
	// Netns runs the nodes in network namespaces; the partition needs it.
	Netns bool
	// Messages is how many dead letters are redriven (default 300);
	// Rate the redrive's pace in messages per second (default 30), so
	// that it runs through the faults.
	Messages int
	Rate     float64
	// ExtraArgs are appended to every server's command line.
	ExtraArgs []string
}

// RedriveResult is results.json of the redrive case.
type RedriveResult struct {
	Seed      uint64       `json:"seed"`
	ReportDir string       `json:"report_dir"`
	Seconds   float64      `json:"seconds"`
	Check     RedriveCheck `json:"check"`
	// Calls counts the Redrive calls by outcome; MovedOK the messages the
	// calls that returned reported as moved.
	Calls       map[string]int `json:"calls"`
	MovedOK     int            `json:"moved_ok"`
	Faults      []string       `json:"faults"`
	Convergence Convergence    `json:"convergence"`
	Valid       bool           `json:"valid"`
	Problems    []string       `json:"problems,omitempty"`
}

const (
	redriveSource = "rd-src"
	redriveDLQ    = "rd-dlq"
	redriveTarget = "rd-target"
)

// RunRedriveCase runs the redrive case end to end and writes its report
// folder. The error is for harness failures; checker findings are in the
// result.
func RunRedriveCase(ctx context.Context, cfg RedriveCaseConfig) (*RedriveResult, error) {
	if cfg.Messages == 0 {
		cfg.Messages = 300
	}
	if cfg.Rate == 0 {
		cfg.Rate = 30
	}
	started := time.Now()
	dir := filepath.Join(cfg.ReportRoot, fmt.Sprintf("%s-%d-redrive-kill-partition", started.UTC().Format("20060102T150405Z"), cfg.Seed))
	if err := os.MkdirAll(filepath.Join(dir, "nodes"), 0o755); err != nil {
		return nil, err
	}
	res := &RedriveResult{Seed: cfg.Seed, ReportDir: dir, Calls: map[string]int{}}
	ids := []string{"n1", "n2", "n3"}
	var netw *Network
	if cfg.Netns {
		var err error
		if netw, err = NewNetwork(fmt.Sprintf("%d/redrive", cfg.Seed), ids); err != nil {
			return nil, err
		}
		defer netw.Close()
	}
	dataDir, err := os.MkdirTemp("", "quorumq-jepsen-data-")
	if err != nil {
		return nil, err
	}
	removeData := func() { os.RemoveAll(dataDir) }
	unreg := registerCleanup(removeData)
	defer func() { unreg(); removeData() }()
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	cl, err := StartCluster(sctx, harness.ClusterConfig{Bin: cfg.Bin, DataDir: dataDir, LogDir: filepath.Join(dir, "nodes"), IDs: ids, ExtraArgs: cfg.ExtraArgs}, netw)
	cancel()
	if err != nil {
		return res, err
	}
	defer cl.Close()
	world := &World{Addrs: cl.APIAddrs()}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	c, err := world.newClient(cctx)
	cancel()
	if err != nil {
		return res, err
	}
	defer c.Close()

	// Dead letters: every message of the source queue, rejected.
	setup, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := c.CreateQueue(setup, redriveSource, client.QueueSettings{DeadLetterQueue: redriveDLQ}, client.WithCreateDLQ()); err != nil {
		return res, fmt.Errorf("create %s: %w", redriveSource, err)
	}
	if _, err := c.CreateQueue(setup, redriveTarget, client.QueueSettings{}); err != nil {
		return res, fmt.Errorf("create %s: %w", redriveTarget, err)
	}
	var batch []client.OutMessage
	for i := range cfg.Messages {
		v := fmt.Sprintf("dl-%04d", i)
		batch = append(batch, client.OutMessage{Body: []byte(v), DedupID: v})
	}
	if _, err := c.SendBatch(setup, redriveSource, batch); err != nil {
		return res, fmt.Errorf("send: %w", err)
	}
	for rejected := 0; rejected < cfg.Messages; {
		msgs, err := c.Receive(setup, redriveSource, 100, client.WithVisibility(time.Minute))
		if err != nil {
			return res, fmt.Errorf("receive: %w", err)
		}
		rs := make([]client.Receipt, len(msgs))
		for i, m := range msgs {
			rs[i] = m.Receipt
		}
		if err := c.Reject(setup, redriveSource, "poison", rs...); err != nil {
			return res, fmt.Errorf("reject: %w", err)
		}
		rejected += len(msgs)
	}
	deadLetters, err := peekBodies(setup, c, redriveDLQ)
	if err != nil {
		return res, err
	}
	if len(deadLetters) != cfg.Messages {
		return res, fmt.Errorf("%s holds %d dead letters before the redrive, want %d", redriveDLQ, len(deadLetters), cfg.Messages)
	}

	// The redrive runs until the DLQ is empty, through every fault: a
	// failed or unknown call is followed by another.
	faultsOver := make(chan struct{})
	redriveDone := make(chan struct{})
	var mu sync.Mutex
	go func() {
		defer close(redriveDone)
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			n, err := c.Redrive(rctx, redriveDLQ, redriveTarget, 0, client.WithRedriveBatch(5), client.WithRedriveRate(cfg.Rate))
			cancel()
			mu.Lock()
			res.MovedOK += n
			res.Calls[string(Classify(err))]++
			mu.Unlock()
			select {
			case <-faultsOver:
				if err == nil && n == 0 {
					return
				}
			default:
			}
			if err != nil || n == 0 {
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()

	// Faults: kill the leader; while it is down, cut the new leader off;
	// restart the killed node while the cut holds; heal.
	env := &Env{Cluster: cl, Net: netw, Rand: rand.New(rand.NewPCG(cfg.Seed, 0x9e3779b97f4a7c15))}
	fault := func(what string, err error) {
		mu.Lock()
		defer mu.Unlock()
		line := fmt.Sprintf("%.1fs %s", time.Since(started).Seconds(), what)
		if err != nil {
			line += ": " + err.Error()
			res.Problems = append(res.Problems, "nemesis: "+line)
		}
		res.Faults = append(res.Faults, line)
	}
	killLeader := &kill{name: "kill-leader", pick: pickLeader}
	cut := &partition{name: "partition-isolate-leader", grudge: grudgeIsolateLeader}
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	time.Sleep(time.Second)
	what, err := killLeader.Inject(fctx, env)
	fault(what, err)
	time.Sleep(2 * time.Second)
	if netw != nil {
		what, err = cut.Inject(fctx, env)
		fault("partition "+what, err)
	}
	time.Sleep(2 * time.Second)
	what, err = killLeader.Heal(fctx, env)
	fault(what, err)
	time.Sleep(2 * time.Second)
	err = HealAll(env)
	fault("heal all", err)
	close(faultsOver)

	hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := cl.WaitHealthy(hctx, len(ids)); err != nil {
		res.Problems = append(res.Problems, "cluster not healthy after heal: "+err.Error())
	}
	select {
	case <-redriveDone:
	case <-time.After(45 * time.Second):
		res.Problems = append(res.Problems, "redrive did not empty the DLQ within 45 s of the heal")
		<-redriveDone
	}
	inDLQ, err := peekBodies(hctx, c, redriveDLQ)
	if err != nil {
		return res, err
	}
	inTarget, err := peekBodies(hctx, c, redriveTarget)
	if err != nil {
		return res, err
	}
	res.Check = CheckRedrive(deadLetters, inDLQ, inTarget)
	res.Problems = append(res.Problems, res.Check.Problems...)
	if len(inDLQ) != 0 {
		res.Problems = append(res.Problems, fmt.Sprintf("%d dead letters left in %s after the redrive ended", len(inDLQ), redriveDLQ))
	}
	if res.MovedOK > len(inTarget) {
		res.Problems = append(res.Problems, fmt.Sprintf("redrive calls reported %d moved, the target holds %d", res.MovedOK, len(inTarget)))
	}
	res.Convergence = cl.WaitConverged(hctx)
	if !res.Convergence.Converged {
		res.Problems = append(res.Problems, "state hashes: "+res.Convergence.Problem)
	}
	res.Seconds = time.Since(started).Seconds()
	res.Valid = len(res.Problems) == 0
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return res, err
	}
	return res, os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644)
}

// peekBodies returns the bodies of every live message of queue, read on
// the leader (peekAll).
func peekBodies(ctx context.Context, c *client.Client, queue string) ([]string, error) {
	ms, err := peekAll(ctx, c, queue)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = string(m.Body)
	}
	return out, nil
}

// peekAll returns every live message of queue, read on the leader page by
// page.
func peekAll(ctx context.Context, c *client.Client, queue string) ([]client.PeekedMessage, error) {
	var out []client.PeekedMessage
	var from uint64
	for {
		page, err := c.Peek(ctx, queue, client.PeekOptions{From: from, Max: 100, Leader: true})
		if err != nil {
			return nil, fmt.Errorf("peek %s from %d: %w", queue, from, err)
		}
		out = append(out, page.Messages...)
		if page.Next == 0 {
			return out, nil
		}
		from = page.Next
	}
}
