package cluster

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport"
	"github.com/quorumq/quorumq/transport/quorumqpb"
	"github.com/quorumq/quorumq/transport/wire"
)

// httpDo sends one HTTP/JSON API call and returns the status and the body.
func httpDo(t *testing.T, client *http.Client, method, url, token, body string) (int, string) {
	t.Helper()
	var r io.Reader = strings.NewReader(body)
	if b, ok := strings.CutPrefix(body, "chunked:"); ok {
		r = io.MultiReader(strings.NewReader(b)) // length unknown: sent chunked
	}
	req, err := http.NewRequestWithContext(ctxT(t, 20*time.Second), method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// decode unmarshals a JSON answer into a generic tree.
func decode(t *testing.T, body string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("answer %q is not JSON: %v", body, err)
	}
	return m
}

// A plain HTTP client that knows one follower's address can create a
// queue, send exactly once, receive and ack: the follower forwards each
// call to the leader.
func TestHTTPAPIOnAFollower(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) { cfg.TickInterval = time.Hour; cfg.AdminAddr = "127.0.0.1:0" })
	base := "http://" + c.Nodes[follower(t, c)].HTTPAddr()
	cl := http.DefaultClient

	if code, body := httpDo(t, cl, "POST", base+"/v1/queues", "", `{"name":"jobs"}`); code != 200 || !strings.Contains(body, `"name":"jobs"`) {
		t.Fatalf("create: %d %s", code, body)
	}
	send := `{"messages":[{"body":"aGVsbG8=","dedupId":"order-1"}]}`
	code, body := httpDo(t, cl, "POST", base+"/v1/queues/jobs/messages", "", send)
	if r := decode(t, body)["results"]; code != 200 || fmt.Sprint(r) != "[map[duplicate:false messageId:1]]" {
		t.Fatalf("send: %d %s", code, body)
	}
	code, body = httpDo(t, cl, "POST", base+"/v1/queues/jobs/messages", "", send)
	if r := decode(t, body)["results"]; code != 200 || fmt.Sprint(r) != "[map[duplicate:true messageId:1]]" {
		t.Fatalf("repeat send with the same dedup ID: %d %s, want the original id and duplicate", code, body)
	}
	code, body = httpDo(t, cl, "POST", base+"/v1/queues/jobs/receive", "", `{"max":10,"visibilityNs":"30000000000"}`)
	if code != 200 {
		t.Fatalf("receive: %d %s", code, body)
	}
	dels, _ := decode(t, body)["deliveries"].([]any)
	if len(dels) != 1 || dels[0].(map[string]any)["body"] != "aGVsbG8=" {
		t.Fatalf("receive: %s, want the one message", body)
	}
	receipt, _ := json.Marshal(dels[0].(map[string]any)["receipt"])
	code, body = httpDo(t, cl, "POST", base+"/v1/queues/jobs/ack", "", `{"receipts":[`+string(receipt)+`]}`)
	if code != 200 || !strings.Contains(body, "outcomes") {
		t.Fatalf("ack: %d %s", code, body)
	}
	code, body = httpDo(t, cl, "GET", base+"/v1/queues/jobs", "", "")
	stats, _ := decode(t, body)["queue"].(map[string]any)["stats"].(map[string]any)
	if code != 200 || stats["ready"] != "0" || stats["leased"] != "0" || stats["enqueuedTotal"] != "1" || stats["ackedTotal"] != "1" {
		t.Fatalf("queue after the ack: %d %s, want nothing ready or leased, one enqueued and acked", code, body)
	}
	code, body = httpDo(t, cl, "GET", base+"/v1/openapi.json", "", "")
	if code != 200 || !strings.Contains(body, `"/v1/queues/{queue}/messages"`) {
		t.Fatalf("openapi: %d %.200s", code, body)
	}
	code, body = httpDo(t, cl, "POST", base+"/quorumq.v1.Queue/ListQueues", "", "{}")
	if code != 404 || !strings.Contains(body, "call it on the gRPC API port") {
		t.Fatalf("an rpc path on the HTTP port: %d %s, want 404 pointing to the gRPC port", code, body)
	}
	code, body = httpDo(t, cl, "GET", base+"/v1/queues/nope", "", "")
	if e := decode(t, body); code != 404 || e["code"] != 5.0 || !strings.Contains(e["message"].(string), "nope") {
		t.Fatalf("unknown queue: %d %s, want 404 with code 5 naming the queue", code, body)
	}
	// HTTP calls run through the gRPC server's interceptors: the
	// follower's metrics count each with its code, as a gRPC call.
	m := scrape(t, c.Nodes[follower(t, c)].AdminAddr())
	for k, v := range map[string]float64{
		`quorumq_rpc_duration_seconds_count{code="OK",method="Queue/Enqueue"}`:        2,
		`quorumq_rpc_duration_seconds_count{code="OK",method="Queue/Receive"}`:        1,
		`quorumq_rpc_duration_seconds_count{code="OK",method="Queue/Ack"}`:            1,
		`quorumq_rpc_duration_seconds_count{code="NotFound",method="Queue/GetQueue"}`: 1,
	} {
		if m[k] != v {
			t.Errorf("follower's %s = %v, want %v", k, m[k], v)
		}
	}
}

// Bad input over HTTP gets a 4xx naming the problem and costs no Raft
// round; a good call on a follower is forwarded with the caller's token.
func TestHTTPBadInputCostsNoRaftRound(t *testing.T) {
	c, _ := tlsTokenClusterWith(t, 3, func(_ int, cfg *Config) { cfg.TickInterval = time.Hour })
	leader := c.Leader(t)
	cl := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.configs[0].APIClientTLS.RootCAs}}}
	base := "https://" + leader.HTTPAddr()
	if code, body := httpDo(t, cl, "POST", base+"/v1/queues", adminToken, `{"name":"jobs"}`); code != 200 {
		t.Fatalf("create: %d %s", code, body)
	}
	oversize := `{"messages":[{"body":"` + strings.Repeat("A", 2*leader.cfg.Limits.MaxRecvMsgSize()) + `"}]}`
	// Empty objects are three bytes of JSON each and a whole message
	// each once decoded: one more than a legal request holds is refused
	// before any is decoded.
	objects := `{"messages":[` + strings.Repeat(`{},`, leader.cfg.Limits.MaxNestedMessages()) + `{}]}`
	for _, tc := range []struct {
		name, token, body string
		code              int
		want              string
	}{
		{"malformed JSON", writeToken, `{"messages":[{"body":`, 400, "request body is not a valid EnqueueRequest"},
		{"unknown field", writeToken, `{"messages":[{"body":"eA==","dedupid":"x"}]}`, 400, `unknown field "dedupid"`},
		{"oversize body", writeToken, oversize, 413, "larger than the HTTP API's limit"},
		{"oversize chunked body", writeToken, "chunked:" + oversize, 413, "larger than the HTTP API's limit"},
		{"missing token", "", `{"messages":[{"body":"eA=="}]}`, 401, "missing or wrong token"},
		{"read-only token", readToken, `{"messages":[{"body":"eA=="}]}`, 403, "needs a token with scope write"},
		{"too many objects", writeToken, objects, 400, "the most a legal request holds"},
		{"over-limit delay", writeToken, `{"messages":[{"body":"eA==","delayNs":"46800000000000"}]}`, 400, "exceeds the limit of 12h0m0s"},
	} {
		before := leader.raft.LastIndex()
		code, body := httpDo(t, cl, "POST", base+"/v1/queues/jobs/messages", tc.token, tc.body)
		msg, _ := decode(t, body)["message"].(string)
		if code != tc.code || !strings.Contains(msg, tc.want) {
			t.Errorf("%s: %d %.300s, want %d with a message containing %q", tc.name, code, body, tc.code, tc.want)
		}
		if after := leader.raft.LastIndex(); after != before {
			t.Errorf("%s: the Raft log moved from index %d to %d", tc.name, before, after)
		}
	}
	// A misspelt query parameter is refused as a misspelt body field is:
	// a lookup by "dedupid" must not answer for no dedup ID at all.
	if code, body := httpDo(t, cl, "GET", base+"/v1/queues/jobs/lookup?dedupid=x", readToken, ""); code != 400 || !strings.Contains(body, `unknown query parameter \"dedupid\"`) {
		t.Errorf("lookup with ?dedupid=: %d %s, want 400 naming the parameter", code, body)
	}
	fbase := "https://" + c.Nodes[follower(t, c)].HTTPAddr()
	if code, body := httpDo(t, cl, "POST", fbase+"/v1/queues/jobs/messages", writeToken, `{"messages":[{"body":"eA=="}]}`); code != 200 {
		t.Fatalf("send with a write token on a follower: %d %s", code, body)
	}
	if code, body := httpDo(t, cl, "POST", fbase+"/v1/queues/jobs/purge", writeToken, `{}`); code != 403 {
		t.Fatalf("purge with a write token on a follower: %d %s, want 403", code, body)
	}
}

// A call forwarded to a leader that cannot be reached may or may not have
// been proposed there: the HTTP caller hears "outcome unknown", which
// tells it to retry with the same IDs, and never "not done".
func TestForwardToAnUnreachableLeaderIsOutcomeUnknown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens there now
	f := &leaderForwarder{n: &Node{cfg: Config{NodeID: "n2"}}}
	defer f.close()
	refused := func(context.Context, any) (any, error) { return nil, wire.NotLeaderError("n1", dead) }
	info := &grpc.UnaryServerInfo{FullMethod: quorumqpb.Queue_Enqueue_FullMethodName}
	req := &quorumqpb.EnqueueRequest{Queue: "jobs", Messages: []*fsmpb.Message{{Body: []byte("x"), DedupId: "d1"}}}

	_, err = f.unary(transport.WithViaHTTP(ctxT(t, 5*time.Second)), req, info, refused)
	if !wire.IsOutcomeUnknown(err) || !strings.Contains(err.Error(), "forwarded to leader n1 at "+dead) {
		t.Fatalf("forward to an unreachable leader: %v, want outcome unknown naming the leader", err)
	}
	// Over gRPC the caller has leader discovery: no forwarding, the hint.
	_, err = f.unary(ctxT(t, 5*time.Second), req, info, refused)
	if id, addr, ok := wire.LeaderHint(err); !ok || id != "n1" || addr != dead {
		t.Fatalf("gRPC call on a follower: %v, want NotLeader with the hint", err)
	}
}

// post sends one HTTP/JSON call from any goroutine and returns the status
// and body, or the error.
func post(ctx context.Context, url, body string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// sendConcurrently sends n one-message enqueues to queue at once, the
// i-th with dedup ID d<i>, and returns each one's status and body.
func sendConcurrently(t *testing.T, base, queue string, n int) ([]int, []string) {
	t.Helper()
	codes, bodies := make([]int, n), make([]string, n)
	errs := make([]error, n)
	ctx := ctxT(t, 30*time.Second)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			codes[i], bodies[i], errs[i] = post(ctx, base+"/v1/queues/"+queue+"/messages",
				fmt.Sprintf(`{"messages": [{"body": %q, "dedupId": "d%d"}]}`, base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "m%d", i)), i))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	return codes, bodies
}

// Concurrent HTTP sends of one queue share Raft entries: each gets its
// own message's result, and the log holds fewer enqueues than requests.
// A gathered command refused as a whole (a queue too full for all of it)
// is not every request's failure: each is tried alone, so exactly the
// room left is filled.
func TestConcurrentHTTPSendsShareRaftEntries(t *testing.T) {
	c := StartTestCluster(t, 3)
	leader := c.Leader(t)
	base := "http://" + leader.HTTPAddr()
	for _, q := range []string{`{"name": "many"}`, `{"name": "small", "settings": {"maxDepth": "10"}}`} {
		if code, body := httpDo(t, http.DefaultClient, http.MethodPost, base+"/v1/queues", "", q); code != http.StatusOK {
			t.Fatalf("create %s: %d %s", q, code, body)
		}
	}
	c.WaitReplicated(t)
	from := leader.raft.LastIndex()
	const n = 64
	codes, bodies := sendConcurrently(t, base, "many", n)
	ids := map[string]bool{}
	for i := range n {
		if codes[i] != http.StatusOK {
			t.Fatalf("send %d: %d %s", i, codes[i], bodies[i])
		}
		r := decode(t, bodies[i])["results"].([]any)
		if len(r) != 1 {
			t.Fatalf("send %d got %d results: %s", i, len(r), bodies[i])
		}
		ids[r[0].(map[string]any)["messageId"].(string)] = true
	}
	if len(ids) != n {
		t.Fatalf("%d sends got %d distinct message ids", n, len(ids))
	}
	entries := 0
	for _, cmd := range logCommands(t, leader, from) {
		if cmd.GetEnqueue().GetQueue() == "many" {
			entries++
		}
	}
	t.Logf("%d concurrent sends took %d log entries", n, entries)
	if entries >= n/2 {
		t.Fatalf("%d concurrent sends took %d log entries, want them gathered into far fewer", n, entries)
	}

	codes, bodies = sendConcurrently(t, base, "small", 16)
	full := 0
	for i, code := range codes {
		switch {
		case code == http.StatusOK:
		case strings.Contains(bodies[i], "max_depth is 10"):
			full++
		default:
			t.Fatalf("send %d to a queue of max depth 10: %d %s", i, code, bodies[i])
		}
	}
	info := decode(t, func() string {
		_, body := httpDo(t, http.DefaultClient, http.MethodGet, base+"/v1/queues/small", "", "")
		return body
	}())
	ready := info["queue"].(map[string]any)["stats"].(map[string]any)["ready"]
	if full != 6 || ready != "10" {
		t.Fatalf("16 sends to a queue with room for 10: %d refused as full, %v ready; want 6 and 10", full, ready)
	}
	c.WaitReplicated(t)
}

// HTTP senders that each send again as soon as they are answered stay in
// one gathered command: once a command of theirs is answered, the next
// one waits (a moment at most) for as many requests before it goes.
// Without that, the senders that come back first go in a command of
// their own, those behind them in the next, and they stay split into two
// groups that each wait two rounds.
func TestSyncHTTPSendersStayGathered(t *testing.T) {
	c := StartTestCluster(t, 3)
	leader := c.Leader(t)
	base := "http://" + leader.HTTPAddr()
	if code, body := httpDo(t, http.DefaultClient, http.MethodPost, base+"/v1/queues", "", `{"name": "loop"}`); code != http.StatusOK {
		t.Fatalf("create: %d %s", code, body)
	}
	c.WaitReplicated(t)
	from := leader.raft.LastIndex()
	const senders, rounds = 16, 40
	ctx := ctxT(t, 60*time.Second)
	errs := make([]error, senders)
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for r := range rounds {
				code, body, err := post(ctx, base+"/v1/queues/loop/messages",
					fmt.Sprintf(`{"messages": [{"body": "bQ==", "dedupId": "s%d-%d"}]}`, s, r))
				if err == nil && code != http.StatusOK {
					err = fmt.Errorf("HTTP %d: %s", code, body)
				}
				if err != nil {
					errs[s] = fmt.Errorf("sender %d, send %d: %w", s, r, err)
					return
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	entries := 0
	for _, cmd := range logCommands(t, leader, from) {
		if cmd.GetEnqueue().GetQueue() == "loop" {
			entries++
		}
	}
	t.Logf("%d senders × %d sync sends took %d log entries (%.1f sends each)", senders, rounds, entries, float64(senders*rounds)/float64(entries))
	if entries > rounds*3/2 {
		t.Fatalf("%d senders × %d sync sends took %d log entries, want at most %d: the senders split into groups that alternate", senders, rounds, entries, rounds*3/2)
	}
}
