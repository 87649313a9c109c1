package console

import (
	"errors"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// view is what every template gets: the session's facts plus one page's
// data.
type view struct {
	se        *session
	Prefix    string
	Page      string
	CSRF      string
	Access    Access
	TokensOn  bool
	RefreshMs int64
	Node      string
	Now       time.Time
	Error     string // an error banner
	Flash     string // the outcome of the last action

	Queues  *queuesData
	Queue   *queueData
	Cluster *clusterData
	Confirm *confirmData
}

func (c *Console) newView(r *http.Request, se *session) *view {
	v := &view{se: se, Prefix: prefix, CSRF: se.csrf, Access: se.access, TokensOn: c.tokensOn(),
		RefreshMs: c.cfg.Refresh.Milliseconds(), Now: time.Now(), Flash: r.URL.Query().Get("done")}
	if c.cfg.Local != nil {
		v.Node = c.cfg.Local().NodeID
	}
	return v
}

// CanWrite and CanAdmin decide which buttons a page shows.
func (v *view) CanWrite() bool { return v.Access >= AccessWrite }
func (v *view) CanAdmin() bool { return v.Access >= AccessAdmin }

var funcs = template.FuncMap{
	"age":   fmtAge,
	"bytes": fmtBytes,
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"dur": func(d time.Duration) string {
		if d < 0 {
			return "unlimited"
		}
		return d.String()
	},
	"unlimited": func(n uint64) string {
		if n == 0 {
			return "unlimited"
		}
		return strconv.FormatUint(n, 10)
	},
	"qpath": func(q string) string { return prefix + "queues/" + url.PathEscape(q) },
	"ms":    func(t time.Time) int64 { return t.UnixMilli() },
	"add":   func(a, b uint64) uint64 { return a + b },
}

// fmtAge is a short age: 45s, 3m12s, 2h05m, 3d4h.
func fmtAge(d time.Duration) string {
	switch {
	case d <= 0:
		return "—"
	case d < time.Minute:
		return fmt.Sprintf("%.0fs", d.Seconds())
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}

func fmtBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// queuesData is the queues page.
type queuesData struct {
	Rows                       []queueRow
	Ready, Leased, Dead        uint64
	Backlogged                 int // queues whose oldest ready message waits over a minute
	Oldest                     time.Duration
	OldestQueue, Leader, Fetch string
}

type queueRow struct {
	*client.QueueInfo
	DeadHere uint64 // dead letters of other queues plus own dead messages
	Alert    bool   // backing up or holding dead letters
	DLQOf    []string
}

// stuckAfter marks a queue as backing up on the queues page.
const stuckAfter = time.Minute

func (c *Console) queuesPage(w http.ResponseWriter, r *http.Request, v *view) {
	ctx, api, cancel, ok := c.call(w, r, v, "queues", callTimeout)
	if !ok {
		return
	}
	defer cancel()
	qs, err := api.ListQueues(ctx)
	if err != nil {
		c.apiFail(w, v, "queues", err)
		return
	}
	d := &queuesData{Fetch: time.Now().Format(time.RFC3339)}
	if id, _, err := api.Leader(ctx); err == nil {
		d.Leader = id
	}
	dlqOf := map[string][]string{}
	for _, q := range qs {
		if dl := q.Settings.DeadLetterQueue; dl != "" {
			dlqOf[dl] = append(dlqOf[dl], q.Name)
		}
	}
	slices.SortFunc(qs, func(a, b *client.QueueInfo) int { return strings.Compare(a.Name, b.Name) })
	for _, q := range qs {
		st := q.Stats
		row := queueRow{QueueInfo: q, DeadHere: st.DeadLettered + st.Dead, DLQOf: dlqOf[q.Name]}
		row.Alert = st.OldestReadyAge > stuckAfter || row.DeadHere > 0
		d.Ready += st.Ready
		d.Leased += st.Leased
		d.Dead += row.DeadHere
		if st.OldestReadyAge > stuckAfter {
			d.Backlogged++
		}
		if st.OldestReadyAge > d.Oldest {
			d.Oldest, d.OldestQueue = st.OldestReadyAge, q.Name
		}
		d.Rows = append(d.Rows, row)
	}
	v.Page, v.Queues = "queues", d
	c.render(w, http.StatusOK, "queues", v)
}

// queueData is the queue page.
type queueData struct {
	Info        *client.QueueInfo
	DLQ         *client.QueueInfo // nil without a dead-letter queue
	DLQOf       []string          // queues that dead-letter into this one
	Peek        []peekRow
	PeekState   string
	PeekStates  []string
	PeekMore    bool
	LookupID    string
	LookupDedup string
	Fate        *client.MessageFate
	FateErr     string
}

type peekRow struct {
	client.PeekedMessage
	Preview string
}

// peekMax is how many messages the queue page shows.
const peekMax = 50

func (c *Console) queuePage(w http.ResponseWriter, r *http.Request, v *view) {
	name := r.PathValue("queue")
	ctx, api, cancel, ok := c.call(w, r, v, "queue", callTimeout)
	if !ok {
		return
	}
	defer cancel()
	qs, err := api.ListQueues(ctx)
	if err != nil {
		c.apiFail(w, v, "queue", err)
		return
	}
	d := &queueData{PeekState: r.URL.Query().Get("state"),
		PeekStates: []string{"all", "ready", "delayed", "leased", "waiting", "dead"}}
	for _, q := range qs {
		if q.Name == name {
			d.Info = q
		}
		if q.Settings.DeadLetterQueue == name {
			d.DLQOf = append(d.DLQOf, q.Name)
		}
	}
	if d.Info == nil {
		v.Error = fmt.Sprintf("queue %q does not exist", name)
		c.render(w, http.StatusNotFound, "error", v)
		return
	}
	for _, q := range qs {
		if q.Name == d.Info.Settings.DeadLetterQueue {
			d.DLQ = q
		}
	}
	if !slices.Contains(d.PeekStates, d.PeekState) {
		d.PeekState = "all"
	}
	page, err := api.Peek(ctx, name, client.PeekOptions{Max: peekMax, State: client.PeekState(d.PeekState)})
	if err != nil {
		c.apiFail(w, v, "queue", err)
		return
	}
	d.PeekMore = page.Next != 0
	for _, m := range page.Messages {
		d.Peek = append(d.Peek, peekRow{PeekedMessage: m, Preview: preview(m.Body, m.BodySize)})
	}
	q := r.URL.Query()
	d.LookupID, d.LookupDedup = strings.TrimSpace(q.Get("id")), strings.TrimSpace(q.Get("dedup"))
	if d.LookupID != "" || d.LookupDedup != "" {
		var o client.LookupOptions
		o.DedupID = d.LookupDedup
		if d.LookupID != "" {
			if o.ID, err = strconv.ParseUint(d.LookupID, 10, 64); err != nil {
				d.FateErr = fmt.Sprintf("message ID %q: want a positive whole number", d.LookupID)
			}
		}
		if d.FateErr == "" {
			if d.Fate, err = api.Lookup(ctx, name, o); err != nil {
				d.FateErr = err.Error()
			}
		}
	}
	v.Page, v.Queue = "queue", d
	c.render(w, http.StatusOK, "queue", v)
}

// previewLen bounds the body shown per peeked message.
const previewLen = 120

func preview(body []byte, size int) string {
	if body == nil {
		return fmt.Sprintf("(%d bytes)", size)
	}
	if !utf8.Valid(body) || strings.ContainsFunc(string(body), func(r rune) bool { return r < 0x20 && r != '\t' && r != '\n' }) {
		return fmt.Sprintf("(%d bytes, binary)", size)
	}
	s := strings.ReplaceAll(string(body), "\n", "⏎")
	if utf8.RuneCountInString(s) > previewLen {
		s = string([]rune(s)[:previewLen]) + "…"
	}
	return s
}

// clusterData is the cluster page.
type clusterData struct {
	Nodes    []nodeRow
	LeaderID string
	Local    LocalInfo
}

type nodeRow struct {
	*quorumqpb.NodeStatus
	Gossip, Suffrage string
	Offset           string
	Local            bool
	Lag              uint64
}

func (c *Console) clusterPage(w http.ResponseWriter, r *http.Request, v *view) {
	ctx, api, cancel, ok := c.call(w, r, v, "cluster", callTimeout)
	if !ok {
		return
	}
	defer cancel()
	st, err := api.Status(ctx)
	if err != nil {
		c.apiFail(w, v, "cluster", err)
		return
	}
	members, err := api.Members(ctx)
	if err != nil {
		c.apiFail(w, v, "cluster", err)
		return
	}
	d := &clusterData{LeaderID: st.GetLeaderId()}
	if c.cfg.Local != nil {
		d.Local = c.cfg.Local()
	}
	var leaderCommit uint64
	for _, n := range st.GetNodes() {
		if n.GetId() == d.LeaderID {
			leaderCommit = n.GetCommitIndex()
		}
	}
	for _, n := range st.GetNodes() {
		row := nodeRow{NodeStatus: n, Gossip: "unknown", Local: n.GetId() == d.Local.NodeID}
		for _, m := range members {
			if m.GetId() == n.GetId() {
				row.Gossip, row.Suffrage = m.GetState(), m.GetRaftSuffrage()
			}
		}
		if n.ClockOffsetNs != nil {
			row.Offset = fmt.Sprintf("%+d ms", int64(math.Round(float64(n.GetClockOffsetNs())/1e6)))
		}
		if n.GetError() == "" && leaderCommit > n.GetAppliedIndex() {
			row.Lag = leaderCommit - n.GetAppliedIndex()
		}
		d.Nodes = append(d.Nodes, row)
	}
	slices.SortFunc(d.Nodes, func(a, b nodeRow) int { return strings.Compare(a.GetId(), b.GetId()) })
	v.Page, v.Cluster = "cluster", d
	c.render(w, http.StatusOK, "cluster", v)
}

// apiFail renders page's error banner for a failed API call.
func (c *Console) apiFail(w http.ResponseWriter, v *view, page string, err error) {
	c.cfg.Logger.Warn("console: API call failed", "page", page, "err", err)
	v.Page = page
	v.Error = err.Error()
	code := http.StatusBadGateway
	switch {
	case errors.Is(err, client.ErrPermissionDenied):
		code = http.StatusForbidden
	case errors.Is(err, client.ErrUnauthenticated):
		code = http.StatusUnauthorized
	}
	c.render(w, code, "error", v)
}
