package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/cluster"
)

// benchConfig is one `quorumq bench` run. Producers and consumers run at the
// same time; either count may be zero (consumers then drain what is there).
type benchConfig struct {
	Dev          bool          `json:"dev"`
	DevBasePort  int           `json:"-"`
	Producers    int           `json:"producers"`
	Consumers    int           `json:"consumers"`
	Size         int           `json:"size"`
	Async        bool          `json:"async"`
	Window       int           `json:"window"`
	Batch        int           `json:"batch"`
	Duration     time.Duration `json:"duration_ns"`
	Count        int64         `json:"count"`
	Queues       int           `json:"queues"`
	Queue        string        `json:"queue,omitempty"`
	Prefill      int64         `json:"prefill"`
	SeparateAcks bool          `json:"separate_acks"`
	// Groups: the messages sent (and prefilled) go to message groups
	// g-0 .. g-<Groups-1> in turn; 0 sends them without a group.
	Groups int `json:"groups"`
	// HTTPAddr: the producers send over the HTTP/JSON API at this
	// host:port (POST /v1/queues/{queue}/messages, a dedup ID each, as
	// client.Send does) instead of over gRPC; "" = gRPC.
	HTTPAddr string `json:"http_addr,omitempty"`
	HTTP     bool   `json:"-"`
	// NoGather: each sync Send is its own Enqueue call (the client's
	// gathering of concurrent Sends off), as each HTTP send is.
	NoGather bool `json:"no_gather,omitempty"`
}

// benchResult is what a run prints, as a table or as JSON.
type benchResult struct {
	Config     benchConfig `json:"config"`
	Elapsed    float64     `json:"elapsed_s"`
	Sent       int64       `json:"sent"`
	SendErrors int64       `json:"send_errors"`
	Acked      int64       `json:"acked"`
	AckErrors  int64       `json:"ack_errors"`
	SendRate   float64     `json:"send_msgs_per_s"`
	SendMBps   float64     `json:"send_mb_per_s"`
	AckRate    float64     `json:"ack_msgs_per_s"`
	Enqueue    latency     `json:"enqueue_latency_ms"`
	EndToEnd   latency     `json:"enqueue_to_ack_latency_ms"`
}

// latency holds percentiles in milliseconds.
type latency struct {
	Samples int     `json:"samples"`
	P50     float64 `json:"p50"`
	P90     float64 `json:"p90"`
	P99     float64 `json:"p99"`
	P999    float64 `json:"p99_9"`
	Max     float64 `json:"max"`
}

func init() { rootCmd.AddCommand(benchCmd()) }

func benchCmd() *cobra.Command {
	var cfg benchConfig
	var cf cliFlags
	var cpuProfile string
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure throughput and latency of a cluster",
		Long: `bench runs producers and consumers against a cluster and prints throughput
(msg/s, MB/s) and latency percentiles for enqueue and for enqueue-to-ack.

Every send is durable (fsynced on a quorum) before it is acknowledged; every
ack is confirmed by the server. Bodies carry their send time, so
enqueue-to-ack latency is measured end to end by the consumer.

--groups N puts the messages in N message groups, g-0 .. g-<N-1>, in turn:
the cluster delivers each group's messages one at a time, so N bounds the
messages being handled at once.`,
		Example: `  quorumq bench --dev --producers 64 --duration 10s
  quorumq bench --dev --producers 1 --async --window 256 --duration 10s
  quorumq bench --dev --producers 0 --consumers 16 --batch 100 --prefill 500000
  quorumq bench --addr 10.0.0.1:7101 --producers 16 --consumers 16 --json
  quorumq bench --addr 10.0.0.1:7101 --queue backlog --producers 0 --consumers 16 --duration 1h
  quorumq bench --dev --producers 16 --async --consumers 16 --groups 100 --duration 30s`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cfg.validate(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			// The profile covers the measured run only, not the set-up
			// and the prefill before its clock starts.
			clockStarts := func() error { return nil }
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return fmt.Errorf("--cpuprofile: %w", err)
				}
				defer f.Close()
				clockStarts = func() error {
					if err := pprof.StartCPUProfile(f); err != nil {
						return fmt.Errorf("--cpuprofile: %w", err)
					}
					return nil
				}
				defer pprof.StopCPUProfile()
			}
			if cfg.Dev {
				dir, err := os.MkdirTemp("", "quorumq-bench-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(dir)
				logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))
				lc, err := cluster.StartLocal(ctx, cluster.LocalOptions{Dir: dir, N: devNodes, BasePort: cfg.DevBasePort, Logger: logger})
				if err != nil {
					return fmt.Errorf("--dev: %w", err)
				}
				defer lc.Close()
				cf.addr = strings.Join(lc.APIAddrs(), ",")
				if cfg.HTTP {
					for _, n := range lc.Nodes {
						if n.ID() == lc.LeaderID {
							cfg.HTTPAddr = n.HTTPAddr()
						}
					}
				}
			}
			// The run's own clock is --duration; --timeout bounds set-up
			// and the final acks on top of it.
			cf.timeout += cfg.Duration
			if cfg.NoGather {
				cf.options = append(cf.options, client.WithSendGathering(false))
			}
			ctx, c, done, err := cf.connect(cmd)
			if err != nil {
				return err
			}
			defer done()
			progress := !cf.json && term.IsTerminal(int(os.Stderr.Fd()))
			send := grpcSend(c)
			if cfg.HTTPAddr != "" {
				send = httpSend(cfg.HTTPAddr, cf.token, cfg.Producers)
			}
			res, err := runBench(ctx, c, send, cfg, cmd.ErrOrStderr(), progress, clockStarts)
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			res.print(cmd.OutOrStdout())
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&cfg.Dev, "dev", false, "start a three-node cluster in this process (temporary data dir) and measure it")
	f.IntVar(&cfg.Producers, "producers", 16, "concurrent producers")
	f.IntVar(&cfg.Consumers, "consumers", 0, "concurrent consumers (receive a batch, process, ack it)")
	f.IntVar(&cfg.Size, "size", 256, "message body size in bytes (at least 8: the send time)")
	f.BoolVar(&cfg.Async, "async", false, "each producer keeps --window sends in flight through one Producer that all producers share, as one process's goroutines share its Client (default: one send at a time)")
	f.IntVar(&cfg.Window, "window", 256, "sends in flight per async producer")
	f.IntVar(&cfg.Batch, "batch", 100, "messages per receive (consumers)")
	f.DurationVar(&cfg.Duration, "duration", 10*time.Second, "how long to run")
	f.Int64Var(&cfg.Count, "count", 0, "stop after this many sends (0: run for --duration); the run never exceeds --duration")
	f.IntVar(&cfg.Queues, "queues", 1, "number of queues, used round-robin")
	f.StringVar(&cfg.Queue, "queue", "", "run against this existing queue instead of new ones, and keep it; with --producers 0 the consumers drain it: the run ends when a receive finds it empty")
	f.BoolVar(&cfg.SeparateAcks, "separate-acks", false, "consumers ack each batch with its own Ack call (default: the acks ride on the next receive, one Raft entry per batch)")
	f.Int64Var(&cfg.Prefill, "prefill", 0, "messages enqueued before the clock starts (for consumer-only runs)")
	f.IntVar(&cfg.DevBasePort, "dev-base-port", 7601, "with --dev: API port of the first node (Raft +100, gossip +200, admin HTTP +300)")
	f.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of this process (with --dev: the three nodes and the clients) to FILE")
	f.IntVar(&cfg.Groups, "groups", 0, "spread the messages sent and prefilled over this many message groups, g-0 .. g-<N-1> (0: no groups)")
	f.BoolVar(&cfg.HTTP, "http", false, "with --dev: producers send over the leader's HTTP/JSON API instead of gRPC")
	f.BoolVar(&cfg.NoGather, "no-gather", false, "turn off the client's gathering of concurrent sends to one queue into one Enqueue call: one call per send, as over HTTP")
	f.StringVar(&cfg.HTTPAddr, "http-addr", "", "producers send over the HTTP/JSON API at this host:port (plain HTTP; --token is sent) instead of gRPC")
	addClientFlags(cmd, &cf)
	return cmd
}

func (c benchConfig) validate() error {
	switch {
	case c.Producers < 0 || c.Producers > 4096:
		return fmt.Errorf("--producers must be 0..4096, got %d", c.Producers)
	case c.Consumers < 0 || c.Consumers > 4096:
		return fmt.Errorf("--consumers must be 0..4096, got %d", c.Consumers)
	case c.Producers == 0 && c.Consumers == 0:
		return errors.New("--producers and --consumers are both 0: nothing to measure")
	case c.Size < 8 || c.Size > 1<<20:
		return fmt.Errorf("--size must be 8..1048576 bytes, got %d", c.Size)
	case c.Window < 1 || c.Window > 65536:
		return fmt.Errorf("--window must be 1..65536, got %d", c.Window)
	case c.Batch < 1 || c.Batch > 1000:
		return fmt.Errorf("--batch must be 1..1000, got %d", c.Batch)
	case c.Duration <= 0 || c.Duration > time.Hour:
		return fmt.Errorf("--duration must be >0 and at most 1h, got %s", c.Duration)
	case c.Count < 0:
		return fmt.Errorf("--count must be >= 0, got %d", c.Count)
	case c.Queues < 1 || c.Queues > 1000:
		return fmt.Errorf("--queues must be 1..1000, got %d", c.Queues)
	case c.Prefill < 0 || c.Prefill > 10_000_000:
		return fmt.Errorf("--prefill must be 0..10000000, got %d", c.Prefill)
	case c.Queue != "" && c.Dev:
		return errors.New("--queue names an existing queue, and --dev starts an empty cluster")
	case c.Queue != "" && c.Queues != 1:
		return fmt.Errorf("--queue names one queue, and --queues is %d", c.Queues)
	case c.Queue != "" && c.Prefill > 0:
		return errors.New("--prefill fills the run's own queues; --queue uses an existing one as it is")
	case c.Groups < 0 || c.Groups > 10_000_000:
		return fmt.Errorf("--groups must be 0..10000000, got %d", c.Groups)
	case (c.HTTP || c.HTTPAddr != "") && (c.Async || c.Groups > 0):
		return errors.New("--http and --http-addr measure sync producers without groups: drop --async and --groups")
	case c.HTTP && !c.Dev:
		return errors.New("--http picks the --dev leader's HTTP API; without --dev use --http-addr")
	case c.Groups > 0 && c.Producers == 0 && c.Prefill == 0:
		return errors.New("--groups groups the messages bench sends, and with --producers 0 and no --prefill it sends none")
	}
	return nil
}

// recorder collects latency samples from many goroutines.
type recorder struct {
	mu      sync.Mutex
	samples []time.Duration
}

func (r *recorder) add(batch []time.Duration) {
	r.mu.Lock()
	r.samples = append(r.samples, batch...)
	r.mu.Unlock()
}

func (r *recorder) summary() latency {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.samples
	if len(s) == 0 {
		return latency{}
	}
	slices.Sort(s)
	pct := func(p float64) float64 {
		i := int(p * float64(len(s)-1))
		return float64(s[i]) / float64(time.Millisecond)
	}
	return latency{Samples: len(s), P50: pct(0.50), P90: pct(0.90), P99: pct(0.99), P999: pct(0.999), Max: pct(1)}
}

// runBench creates the run's queues, prefills them, calls clockStarts and
// runs the workload for its duration or count.
func runBench(ctx context.Context, c *client.Client, send sendFunc, cfg benchConfig, progressOut io.Writer, progress bool, clockStarts func() error) (*benchResult, error) {

	run := fmt.Sprintf("bench-%d", time.Now().UnixNano())
	queues := make([]string, cfg.Queues)
	for i := range queues {
		if cfg.Queue != "" {
			queues[i] = cfg.Queue
			if _, err := c.GetQueue(ctx, cfg.Queue); err != nil {
				return nil, fmt.Errorf("--queue %s: %w", cfg.Queue, err)
			}
			continue
		}
		queues[i] = fmt.Sprintf("%s-%d", run, i)
		if _, err := c.CreateQueue(ctx, queues[i], client.QueueSettings{}); err != nil {
			return nil, fmt.Errorf("create queue %s: %w", queues[i], err)
		}
	}
	groups := &groupCycle{n: int64(cfg.Groups)}
	if cfg.Prefill > 0 {
		if err := prefill(ctx, c, queues, cfg, groups); err != nil {
			return nil, err
		}
	}

	if err := clockStarts(); err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	var bar *progressbar.ProgressBar
	if progress {
		bar = progressbar.NewOptions64(int64(cfg.Duration/time.Second),
			progressbar.OptionSetWriter(progressOut),
			progressbar.OptionSetDescription("bench"),
			progressbar.OptionSetItsString("s"),
			progressbar.OptionShowCount(),
			progressbar.OptionClearOnFinish())
	}

	var (
		sent, sendErrs, acked, ackErrs atomic.Int64
		budget                         = cfg.Count
		enqLat, e2eLat                 recorder
		wg                             sync.WaitGroup
	)
	// take reserves one send against --count; false once it is used up.
	take := func() bool {
		if budget == 0 {
			return true
		}
		return sent.Load()+sendErrs.Load() < budget
	}
	body := func() []byte {
		b := make([]byte, cfg.Size)
		binary.LittleEndian.PutUint64(b, uint64(time.Now().UnixNano()))
		return b
	}

	// The async producers share one Producer, as the goroutines of one
	// process share its Client: their sends to a queue go out together.
	var prod *client.Producer
	if cfg.Async {
		prod = c.NewProducer()
		defer prod.Close()
	}
	start := time.Now()
	for p := 0; p < cfg.Producers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			local := make([]time.Duration, 0, 1024)
			defer func() { enqLat.add(local) }()
			q := queues[p%len(queues)]
			if !cfg.Async {
				for runCtx.Err() == nil && take() {
					t0 := time.Now()
					if err := send(runCtx, q, body(), groups.next()); err != nil {
						if runCtx.Err() == nil {
							sendErrs.Add(1)
						}
						continue
					}
					local = append(local, time.Since(t0))
					sent.Add(1)
				}
				return
			}
			type inflight struct {
				f  *client.SendFuture
				t0 time.Time
			}
			window := make(chan inflight, cfg.Window)
			done := make(chan struct{})
			go func() {
				defer close(done)
				for w := range window {
					if _, err := w.f.Wait(ctx); err != nil {
						if runCtx.Err() == nil {
							sendErrs.Add(1)
						}
						continue
					}
					local = append(local, time.Since(w.t0))
					sent.Add(1)
				}
			}()
			for runCtx.Err() == nil && take() {
				t0 := time.Now()
				window <- inflight{prod.SendAsync(runCtx, q, client.OutMessage{Body: body(), Group: groups.next()}), t0}
			}
			close(window)
			<-done
		}(p)
	}
	for k := 0; k < cfg.Consumers; k++ {
		wg.Add(1)
		go func(k int) {
			defer wg.Done()
			local := make([]time.Duration, 0, 1024)
			defer func() { e2eLat.add(local) }()
			q := queues[k%len(queues)]
			// confirmed records a batch whose ack the server confirmed.
			confirmed := func(msgs []client.Message) {
				now := time.Now()
				for _, m := range msgs {
					if cfg.Queue != "" {
						break // bodies of an existing queue carry no send time
					}
					if sentAt := int64(binary.LittleEndian.Uint64(m.Body)); sentAt != 0 {
						local = append(local, now.Sub(time.Unix(0, sentAt)))
					}
				}
				// A consumer-only run ends when the prefill is drained.
				if acked.Add(int64(len(msgs))) >= cfg.Prefill && cfg.Producers == 0 && cfg.Queue == "" {
					cancel()
				}
			}
			var pending []client.Message // received, not yet acked
			receipts := func() []client.Receipt {
				rs := make([]client.Receipt, len(pending))
				for i, m := range pending {
					rs[i] = m.Receipt
				}
				return rs
			}
			for runCtx.Err() == nil {
				var msgs []client.Message
				var err error
				if cfg.SeparateAcks {
					msgs, err = c.Receive(runCtx, q, cfg.Batch, client.WithWait(time.Second))
					if err == nil && len(msgs) == 0 && cfg.Queue != "" && cfg.Producers == 0 {
						cancel() // the existing queue is drained
					}
					if err == nil && len(msgs) > 0 {
						pending = msgs
						// Ack with the caller's context, not runCtx: a
						// receive that succeeded is always confirmed.
						if aerr := c.Ack(ctx, q, receipts()...); aerr != nil {
							ackErrs.Add(int64(len(pending)))
						} else {
							confirmed(pending)
						}
						pending = nil
					}
					continue
				}
				// The previous batch's acks ride on the next receive: one
				// Raft entry per batch instead of two.
				// With acks to confirm, do not long-poll: the answer (and
				// so the confirmation) would wait for the next message.
				wait := time.Second
				if len(pending) > 0 {
					wait = 0
				}
				var ackErr error
				msgs, ackErr, err = c.AckAndReceive(runCtx, q, receipts(), cfg.Batch, client.WithWait(wait))
				if err != nil {
					continue // pending stays and is acked by the next call
				}
				// Draining an existing queue ends when a long poll finds
				// it empty.
				if len(msgs) == 0 && wait > 0 && cfg.Queue != "" && cfg.Producers == 0 {
					cancel()
				}
				if ackErr != nil {
					ackErrs.Add(int64(len(pending)))
				} else {
					confirmed(pending)
				}
				pending = msgs
			}
			if len(pending) > 0 {
				if err := c.Ack(ctx, q, receipts()...); err != nil {
					ackErrs.Add(int64(len(pending)))
				} else {
					confirmed(pending)
				}
			}
		}(k)
	}
	if bar != nil {
		go func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-runCtx.Done():
					return
				case <-t.C:
					_ = bar.Add(1)
					bar.Describe(fmt.Sprintf("bench: %d sent, %d acked", sent.Load(), acked.Load()))
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	if bar != nil {
		_ = bar.Finish()
	}
	if cfg.Queue == "" {
		for _, q := range queues {
			_ = c.DeleteQueue(ctx, q)
		}
	}
	res := &benchResult{
		Config: cfg, Elapsed: elapsed,
		Sent: sent.Load(), SendErrors: sendErrs.Load(),
		Acked: acked.Load(), AckErrors: ackErrs.Load(),
		Enqueue: enqLat.summary(), EndToEnd: e2eLat.summary(),
	}
	res.SendRate = float64(res.Sent) / elapsed
	res.SendMBps = res.SendRate * float64(cfg.Size) / 1e6
	res.AckRate = float64(res.Acked) / elapsed
	return res, nil
}

// groupCycle hands out the message groups of --groups in turn, g-0 ..
// g-<n-1> and again, across all producers; "" when n is 0.
type groupCycle struct {
	n    int64
	sent atomic.Int64
}

func (g *groupCycle) next() string {
	if g.n == 0 {
		return ""
	}
	return "g-" + strconv.FormatInt((g.sent.Add(1)-1)%g.n, 10)
}

// prefill loads the queues before the clock starts, in large batches.
func prefill(ctx context.Context, c *client.Client, queues []string, cfg benchConfig, groups *groupCycle) error {
	const batch = 500
	msgs := make([]client.OutMessage, batch)
	for left, i := cfg.Prefill, 0; left > 0; i++ {
		n := min(int64(batch), left)
		for j := range msgs[:n] {
			// Send time 0: a prefilled message's wait in the queue is not
			// an enqueue-to-ack latency.
			msgs[j] = client.OutMessage{Body: make([]byte, cfg.Size), Group: groups.next()}
		}
		if _, err := c.SendBatch(ctx, queues[i%len(queues)], msgs[:n]); err != nil {
			return fmt.Errorf("prefill: %w", err)
		}
		left -= n
	}
	return nil
}

func (r *benchResult) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	mode := "sync"
	if r.Config.Async {
		mode = fmt.Sprintf("async, window %d", r.Config.Window)
	}
	switch {
	case r.Config.HTTPAddr != "":
		mode += ", HTTP/JSON"
	case r.Config.NoGather:
		mode += ", gRPC, one call per send"
	default:
		mode += ", gRPC"
	}
	fmt.Fprintf(tw, "producers\t%d (%s)\n", r.Config.Producers, mode)
	fmt.Fprintf(tw, "consumers\t%d (batch %d)\n", r.Config.Consumers, r.Config.Batch)
	fmt.Fprintf(tw, "message size\t%d B\n", r.Config.Size)
	switch n := r.Config.Groups; n {
	case 0:
		fmt.Fprintln(tw, "message groups\tnone")
	case 1:
		fmt.Fprintln(tw, "message groups\t1 (g-0)")
	default:
		fmt.Fprintf(tw, "message groups\t%d (g-0 .. g-%d)\n", n, n-1)
	}
	fmt.Fprintf(tw, "elapsed\t%.2f s\n", r.Elapsed)
	fmt.Fprintf(tw, "sent\t%d (%d errors)\t%.0f msg/s\t%.2f MB/s\n", r.Sent, r.SendErrors, r.SendRate, r.SendMBps)
	fmt.Fprintf(tw, "acked\t%d (%d errors)\t%.0f msg/s\n", r.Acked, r.AckErrors, r.AckRate)
	if r.Enqueue.Samples+r.EndToEnd.Samples > 0 {
		fmt.Fprintln(tw, "latency (ms)\tp50\tp90\tp99\tp99.9\tmax")
	}
	for _, l := range []struct {
		name string
		l    latency
	}{{"enqueue", r.Enqueue}, {"enqueue-to-ack", r.EndToEnd}} {
		if l.l.Samples == 0 {
			continue
		}
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\n", l.name, l.l.P50, l.l.P90, l.l.P99, l.l.P999, l.l.Max)
	}
	tw.Flush()
}
