package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/quorumq/quorumq/client"
)

// defaultAddrs reaches the API ports of `quorumq dev`.
const defaultAddrs = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103"

// cliFlags are the flags every CLI verb shares: which cluster, how to
// authenticate, how long to try, and the output format.
type cliFlags struct {
	addr     string
	json     bool
	timeout  time.Duration
	token    string
	tlsOn    bool
	tlsCA    string
	tlsNoVfy bool
	// options are further client options a verb adds (bench --no-gather).
	options []client.Option
}

// addClientFlags adds the shared flags to cmd. They are per command, not
// persistent on the root, so they never collide with the server's flags.
func addClientFlags(cmd *cobra.Command, f *cliFlags) {
	addr := os.Getenv("QUORUMQ_ADDR")
	if addr == "" {
		addr = defaultAddrs
	}
	fl := cmd.Flags()
	fl.StringVar(&f.addr, "addr", addr, "comma-separated API addresses of cluster nodes (env QUORUMQ_ADDR)")
	fl.BoolVar(&f.json, "json", false, "print JSON instead of a table")
	fl.DurationVar(&f.timeout, "timeout", 30*time.Second, "give up after this long (retries through leader changes until then)")
	fl.StringVar(&f.token, "token", os.Getenv("QUORUMQ_TOKEN"), "auth token, sent only over TLS (env QUORUMQ_TOKEN)")
	fl.BoolVar(&f.tlsOn, "tls", false, "connect with TLS (system roots unless --tls-ca)")
	fl.StringVar(&f.tlsCA, "tls-ca", "", "PEM file of the CA that signed the nodes' certificates (implies --tls)")
	fl.BoolVar(&f.tlsNoVfy, "tls-skip-verify", false, "do not verify the nodes' certificates (testing only; implies --tls)")
}

// connect returns a context bounded by --timeout and a client for --addr.
func (f *cliFlags) connect(cmd *cobra.Command) (context.Context, *client.Client, func(), error) {
	ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
	var addrs []string
	for _, a := range strings.Split(f.addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		cancel()
		return nil, nil, nil, fmt.Errorf("--addr: no address given (want host:port[,host:port...])")
	}
	var opts []client.Option
	if f.tlsOn || f.tlsCA != "" || f.tlsNoVfy {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: f.tlsNoVfy}
		if f.tlsCA != "" {
			pem, err := os.ReadFile(f.tlsCA)
			if err != nil {
				cancel()
				return nil, nil, nil, fmt.Errorf("--tls-ca: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				cancel()
				return nil, nil, nil, fmt.Errorf("--tls-ca: no PEM certificate in %s", f.tlsCA)
			}
			cfg.RootCAs = pool
		}
		opts = append(opts, client.WithTLS(cfg))
	}
	if f.token != "" {
		opts = append(opts, client.WithToken(f.token))
	}
	c, err := client.New(ctx, addrs, append(opts, f.options...)...)
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	return ctx, c, func() { c.Close(); cancel() }, nil
}

// clientVerb completes cmd as a verb that talks to a cluster: it adds the
// shared client flags, and its RunE hands run a connected client and a
// context bounded by --timeout.
func clientVerb(cmd *cobra.Command, run func(ctx context.Context, c *client.Client, f *cliFlags, cmd *cobra.Command, args []string) error) *cobra.Command {
	var f cliFlags
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx, c, done, err := f.connect(cmd)
		if err != nil {
			return err
		}
		defer done()
		return run(ctx, c, &f, cmd, args)
	}
	addClientFlags(cmd, &f)
	return cmd
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes aligned columns: header first, then rows.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// queueJSON is the stable JSON form of a queue's settings and stats.
type queueJSON struct {
	Name              string `json:"name"`
	CreatedAt         string `json:"created_at,omitempty"`
	VisibilityTimeout string `json:"visibility_timeout"`
	MaxDeliveries     uint32 `json:"max_deliveries"`
	DeadLetterQueue   string `json:"dead_letter_queue"`
	DedupWindow       string `json:"dedup_window"`
	Retention         string `json:"retention"`
	MaxDepth          uint64 `json:"max_depth"`
	Ready             uint64 `json:"ready"`
	Leased            uint64 `json:"leased"`
	Delayed           uint64 `json:"delayed"`
	// Waiting: held behind an earlier message of their group.
	Waiting      uint64 `json:"waiting"`
	DeadLettered uint64 `json:"dead_lettered"`
	Dead         uint64 `json:"dead"` // dead letters with nowhere to go, kept here
	// Groups: message groups with at least one message in the queue.
	Groups uint64 `json:"groups"`
	// OldestReadyAge: how long the oldest ready message has waited (0s:
	// none ready).
	OldestReadyAge    string `json:"oldest_ready_age"`
	EnqueuedTotal     uint64 `json:"enqueued_total"`
	DeliveredTotal    uint64 `json:"delivered_total"`
	AckedTotal        uint64 `json:"acked_total"`
	RedeliveredTotal  uint64 `json:"redelivered_total"`
	DedupHitsTotal    uint64 `json:"dedup_hits_total"`
	ExpiredTotal      uint64 `json:"expired_total"`
	DeadLetteredTotal uint64 `json:"dead_lettered_total"`
	RedrivenTotal     uint64 `json:"redriven_total"`
}

func queueOf(q *client.QueueInfo) queueJSON {
	s, st := q.Settings, q.Stats
	out := queueJSON{
		Name:              q.Name,
		VisibilityTimeout: s.VisibilityTimeout.String(),
		MaxDeliveries:     s.MaxDeliveries,
		DeadLetterQueue:   s.DeadLetterQueue,
		DedupWindow:       s.DedupWindow.String(),
		Retention:         s.Retention.String(),
		MaxDepth:          s.MaxDepth,
		Ready:             st.Ready,
		Leased:            st.Leased,
		Delayed:           st.Delayed,
		Waiting:           st.Waiting,
		DeadLettered:      st.DeadLettered,
		Dead:              st.Dead,
		Groups:            st.Groups,
		OldestReadyAge:    st.OldestReadyAge.Round(time.Millisecond).String(),
		EnqueuedTotal:     st.EnqueuedTotal,
		DeliveredTotal:    st.DeliveredTotal,
		AckedTotal:        st.AckedTotal,
		RedeliveredTotal:  st.RedeliveredTotal,
		DedupHitsTotal:    st.DedupHitsTotal,
		ExpiredTotal:      st.ExpiredTotal,
		DeadLetteredTotal: st.DeadLetteredTotal,
		RedrivenTotal:     st.RedrivenTotal,
	}
	if s.Retention == client.NoRetentionLimit {
		out.Retention = "forever"
	}
	if !q.CreatedAt.IsZero() {
		out.CreatedAt = q.CreatedAt.UTC().Format(time.RFC3339)
	}
	return out
}

// queueTable prints queues one per row with their main counters.
func queueTable(w io.Writer, qs []*client.QueueInfo) error {
	rows := make([][]string, len(qs))
	for i, q := range qs {
		j := queueOf(q)
		rows[i] = []string{j.Name, u(j.Ready), u(j.Leased), u(j.Delayed), u(j.DeadLettered),
			u(j.EnqueuedTotal), u(j.AckedTotal), u(j.RedeliveredTotal), j.VisibilityTimeout}
	}
	return table(w, []string{"QUEUE", "READY", "LEASED", "DELAYED", "DLQ'D", "ENQUEUED", "ACKED", "REDELIVERED", "VISIBILITY"}, rows)
}

func u(v uint64) string { return fmt.Sprint(v) }
