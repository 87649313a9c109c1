package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quorumq/quorumq/cluster"
)

// curlStep is one call of the README's curl walk-through.
type curlStep struct {
	method, path, body string
}

// curlDo runs one step the way `curl -d` does (one HTTP request, the
// body typed as a form) and returns
// the status and the decoded JSON answer.
func curlDo(t *testing.T, base string, s curlStep) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), s.method, base+s.path, strings.NewReader(s.body))
	if err != nil {
		t.Fatal(err)
	}
	if s.body != "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded") // what curl -d sends
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", s.method, s.path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s %s answered %q: not JSON: %v", s.method, s.path, b, err)
	}
	return resp.StatusCode, m
}

// TestHTTPExamplesAgainstDev runs the README's curl walk-through (create,
// send, receive, ack) and docs/examples/worker.py against `quorumq dev`,
// each through a follower's HTTP address, as a load balancer would pick.
func TestHTTPExamplesAgainstDev(t *testing.T) {
	d := startDev(t)
	printed := d.out.String()
	var urls []string
	for i := range devNodes {
		urls = append(urls, fmt.Sprintf("http://127.0.0.1:%d", d.base+cluster.LocalHTTPPortOffset+i))
	}
	if want := "http: " + strings.Join(urls, " ") + " (HTTP/JSON API"; !strings.Contains(printed, want) {
		t.Fatalf("quorumq dev printed:\n%s\nwant a line starting %q", printed, want)
	}
	// A follower's address: the walk-through must not depend on finding
	// the leader.
	base := urls[0]
	for i := range devNodes {
		if !strings.Contains(printed, fmt.Sprintf("  n%d  api 127.0.0.1:%d", i+1, d.base+i)) {
			t.Fatalf("quorumq dev printed:\n%s\nno line for n%d", printed, i+1)
		}
		line := printed[strings.Index(printed, fmt.Sprintf("  n%d  api", i+1)):]
		if line = line[:strings.Index(line, "\n")]; strings.HasSuffix(line, "(follower)") {
			base = urls[i]
			break
		}
	}

	// The README's steps, in order.
	if code, got := curlDo(t, base, curlStep{"POST", "/v1/queues", `{"name": "jobs"}`}); code != 200 || got["queue"].(map[string]any)["name"] != "jobs" {
		t.Fatalf("create: %d %v", code, got)
	}
	if code, got := curlDo(t, base, curlStep{"POST", "/v1/queues/jobs/messages", `{"messages": [{"body": "aGVsbG8=", "dedupId": "order-42"}]}`}); code != 200 || fmt.Sprint(got["results"]) != "[map[duplicate:false messageId:1]]" {
		t.Fatalf("send: %d %v", code, got)
	}
	if code, got := curlDo(t, base, curlStep{"POST", "/v1/queues/jobs/messages", `{"messages": [{"body": "aGVsbG8=", "dedupId": "order-42"}]}`}); code != 200 || fmt.Sprint(got["results"]) != "[map[duplicate:true messageId:1]]" {
		t.Fatalf("send again: %d %v", code, got)
	}
	code, got := curlDo(t, base, curlStep{"POST", "/v1/queues/jobs/receive", `{"max": 10, "visibilityNs": "30000000000"}`})
	dels, _ := got["deliveries"].([]any)
	if code != 200 || len(dels) != 1 || dels[0].(map[string]any)["body"] != "aGVsbG8=" {
		t.Fatalf("receive: %d %v", code, got)
	}
	if r := dels[0].(map[string]any)["receipt"]; fmt.Sprint(r) != "map[attempt:1 messageId:1 queue:jobs]" {
		t.Fatalf("receipt %v, want the one the README acks", r)
	}
	if code, got := curlDo(t, base, curlStep{"POST", "/v1/queues/jobs/ack", `{"receipts": [{"messageId": "1", "attempt": 1, "queue": "jobs"}]}`}); code != 200 || fmt.Sprint(got["outcomes"]) != "[ACK_OK]" {
		t.Fatalf("ack: %d %v", code, got)
	}

	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed: docs/examples/worker.py not run (.ci/run installs it)")
	}
	ctx := t.Context()
	out, err := exec.CommandContext(ctx, python, filepath.Join("..", "..", "docs", "examples", "worker.py"), base, "demo-py").CombinedOutput()
	t.Logf("worker.py:\n%s", out)
	if err != nil {
		t.Fatalf("worker.py: %v", err)
	}
	for _, want := range []string{
		"sent job-1 as message 1", "sent job-1 again: message 1, duplicate=True",
		"'fail-once: resize photo 2' failed, nacked",
		"attempt 2: 'fail-once: resize photo 2' done, ack ACK_OK",
		"done: 3 jobs processed; queue demo-py: ready 0, enqueued 3, acked 3, dedup hits 1",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("worker.py printed no %q", want)
		}
	}
}

// bench --http-addr sends over the HTTP/JSON API, here a follower's: every
// send bench counts landed once (the queue's count says so, not only
// bench's).
func TestBenchSendsOverHTTP(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	addr := strings.Join(tc.Addrs(), ",")
	follower := tc.Nodes[0]
	for _, n := range tc.Nodes {
		if !n.IsLeader() {
			follower = n
		}
	}
	mustRun(t, queueCreateCmd(), addr, "", "httpq")
	var res benchResult
	out := mustRun(t, benchCmd(), addr, "", "--queue", "httpq", "--http-addr", follower.HTTPAddr(), "--producers", "4", "--count", "200", "--duration", "20s", "--json")
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("bench --json = %s (%v)", out, err)
	}
	// --count is checked before each send, so the 4 producers may pass
	// it by up to 3.
	if res.Sent < 200 || res.Sent > 203 || res.SendErrors != 0 || res.Config.HTTPAddr != follower.HTTPAddr() {
		t.Fatalf("bench --http-addr sent %d (%d errors) over %q, want 200..203 over the follower's HTTP API", res.Sent, res.SendErrors, res.Config.HTTPAddr)
	}
	var q queueJSON
	if err := json.Unmarshal([]byte(mustRun(t, queueStatsCmd(), addr, "", "httpq", "--json")), &q); err != nil || q.EnqueuedTotal != uint64(res.Sent) {
		t.Fatalf("queue after the run: %+v (%v), want the %d sent enqueued", q, err, res.Sent)
	}
	for _, args := range [][]string{{"--http"}, {"--http-addr", "x:1", "--async"}} {
		if _, err := run(t, benchCmd(), addr, "", args...); err == nil {
			t.Fatalf("bench %v: no error", args)
		}
	}
}
